"""Co-occurrence counts, the maximum spanning forest and families on planted hierarchies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.features.families import (
    CleanRule,
    build_families,
    clean_features,
    cooccurrence,
    maximum_spanning_forest,
    summarize,
    top_cooccurring,
    top_cooccurring_all,
)


def _random_codes(rng, N, W, n, zero_share=0.25):
    idx = np.stack([rng.choice(n, W, replace=False) for _ in range(N)]).astype(np.int32)
    val = rng.random((N, W)).astype(np.float32) + 0.01
    unused = rng.random((N, W)) < zero_share
    val[unused] = 0
    # Unused slots often point at latent 0 (padding): they must not count, and a row that
    # also holds latent 0 for real must count it once.
    idx[unused & (rng.random((N, W)) < 0.5)] = 0
    return val, idx


def _dense_reference(val, idx, n):
    A = np.zeros((val.shape[0], n), dtype=np.int64)
    r, c = np.nonzero(val)
    A[r, idx[r, c]] = 1
    return A.T @ A


def _codes_from_sets(N, fires: dict[int, np.ndarray], W: int):
    """Codes with latent f on papers fires[f]; slots beyond a paper's latents stay unused."""
    per_paper: list[list[int]] = [[] for _ in range(N)]
    for f, papers in fires.items():
        for p in np.asarray(papers).tolist():
            per_paper[p].append(f)
    assert max(len(x) for x in per_paper) <= W
    idx = np.zeros((N, W), np.int32)
    val = np.zeros((N, W), np.float32)
    for p, fs in enumerate(per_paper):
        idx[p, : len(fs)] = fs
        val[p, : len(fs)] = 1.0
    return val, idx


def test_cooccurrence_matches_dense_reference_for_any_chunking():
    rng = np.random.default_rng(0)
    N, W, n = 700, 12, 90
    val, idx = _random_codes(rng, N, W, n)
    ref = _dense_reference(val, idx, n)
    results = [cooccurrence(val, idx, n, chunk_rows=c) for c in (1, 7, 64, 699, 5000, None)]
    for C in results:
        assert C.shape == (n, n)
        assert np.issubdtype(C.dtype, np.integer)
        assert np.array_equal(C.toarray(), ref)
        assert (C != C.T).nnz == 0
    own = [
        len({r for r, c in zip(*np.nonzero(val), strict=True) if idx[r, c] == f}) for f in range(n)
    ]
    assert C.diagonal().tolist() == own


def test_top_cooccurring_matches_dense_shares():
    rng = np.random.default_rng(1)
    n = 60
    val, idx = _random_codes(rng, 400, 8, n)
    C = cooccurrence(val, idx, n)
    ref = _dense_reference(val, idx, n)
    everyone = top_cooccurring_all(C, 5)
    small_blocks = top_cooccurring_all(C, 5, block_nnz=17)
    for i in range(n):
        shares = ref[i] / ref[i, i]
        cand = [(j, shares[j]) for j in range(n) if j != i and ref[i, j] > 0]
        want = sorted(cand, key=lambda t: (-t[1], t[0]))[:5]
        got = top_cooccurring(C, i, 5)
        assert [j for j, _ in got] == [j for j, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want])
        assert everyone[i] == got
        assert small_blocks[i] == got


def _kruskal_total(n, edges):
    """Plain Kruskal, highest weight first: total weight and edge count of the forest."""
    root = list(range(n))

    def find(x):
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    total, count = 0.0, 0
    for u, v, w in sorted(edges, key=lambda e: -e[2]):
        ru, rv = find(u), find(v)
        if ru != rv:
            root[ru] = rv
            total += w
            count += 1
    return total, count


def _is_forest(n, edges):
    root = list(range(n))

    def find(x):
        while root[x] != x:
            x = root[x]
        return x

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru == rv:
            return False
        root[ru] = rv
    return True


@pytest.mark.parametrize("seed", range(4))
def test_maximum_spanning_forest_is_maximum_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 7
    pairs = [p for p in itertools.combinations(range(n), 2) if rng.random() < 0.5]
    # Few distinct weights: ties must not cost total weight.
    w = rng.integers(1, 4, len(pairs)).astype(np.float64) / 3
    u = np.array([p[0] for p in pairs])
    v = np.array([p[1] for p in pairs])
    chosen = maximum_spanning_forest(u, v, w, n)
    _, size = _kruskal_total(n, list(zip(u, v, w, strict=True)))
    best = max(
        sum(w[list(sub)])
        for sub in itertools.combinations(range(len(pairs)), size)
        if _is_forest(n, [pairs[e] for e in sub])
    )
    assert len(chosen) == size
    assert _is_forest(n, [pairs[e] for e in chosen])
    assert w[chosen].sum() == pytest.approx(best)


def test_maximum_spanning_forest_matches_kruskal_on_a_larger_graph():
    rng = np.random.default_rng(5)
    n = 80
    pairs = sorted({tuple(sorted(rng.choice(70, 2, replace=False))) for _ in range(300)})
    u = np.array([p[0] for p in pairs])
    v = np.array([p[1] for p in pairs])
    w = rng.random(len(pairs))  # distinct: the maximum forest is unique
    chosen = maximum_spanning_forest(u, v, w, n)
    total, count = _kruskal_total(n, list(zip(u, v, w, strict=True)))
    assert len(chosen) == count
    assert w[chosen].sum() == pytest.approx(total)


def _planted(rng):
    """P over papers 0..599; C1..C3 on its disjoint thirds; G on half of C1; unrelated
    features U on random papers outside P's block (plus a few inside, as noise)."""
    N = 3000
    P, C1, C2, C3, G = 0, 1, 2, 3, 4
    block = rng.permutation(600)
    fires = {P: block, C1: block[:200], C2: block[200:400], C3: block[400:600]}
    fires[G] = block[:100]
    outside = np.arange(600, N)
    # A few stray firings outside P's block: P(P | Ci) just under 1, still the parent.
    for c in (C1, C2, C3):
        fires[c] = np.concatenate([fires[c], rng.choice(outside, 4, replace=False)])
    unrelated = list(range(5, 35))
    for f in unrelated:
        fires[f] = np.concatenate(
            [rng.choice(outside, 160, replace=False), rng.choice(600, 4, replace=False)]
        )
    val, idx = _codes_from_sets(N, fires, W=16)
    return cooccurrence(val, idx, 40), (P, C1, C2, C3, G), unrelated


def test_planted_hierarchy_gives_one_family_under_the_general_feature():
    C, (P, C1, C2, C3, G), unrelated = _planted(np.random.default_rng(2))
    fam = build_families(C)
    heads = {f.parent: f for f in fam.families}
    assert P in heads
    f = heads[P]
    assert f.members == [P, C1, C2, C3, G]
    assert f.depth == 2
    assert fam.parent[[C1, C2, C3]].tolist() == [P, P, P]
    # G is contained in C1 and P alike; the tighter container wins.
    assert fam.parent[G] == C1
    assert fam.parent[P] == -1
    assert fam.children[P] == [C1, C2, C3]
    assert fam.family[[P, C1, C2, C3, G]].tolist() == [f.id] * 5
    assert not set(unrelated) & set(f.members)
    assert all(fam.family[u] != f.id for u in unrelated)
    # Dead latents (35..39) take no part.
    assert (fam.parent[35:] == -1).all() and (fam.family[35:] == -1).all()
    # Ids are the families' positions; members list the parent first.
    assert [x.id for x in fam.families] == list(range(len(fam.families)))
    assert all(x.members[0] == x.parent for x in fam.families)
    assert all(x.members[1:] == sorted(x.members[1:]) for x in fam.families)


def test_planted_orientation_follows_density_not_latent_order():
    rng = np.random.default_rng(3)
    N = 2000
    block = rng.permutation(500)
    # The general feature gets the highest id: the parent must still be it.
    fires = {9: block, 1: block[:150], 2: block[150:300], 3: block[300:500]}
    val, idx = _codes_from_sets(N, fires, W=4)
    fam = build_families(cooccurrence(val, idx, 10))
    assert [(f.parent, f.members, f.depth) for f in fam.families] == [(9, [9, 1, 2, 3], 1)]


def test_max_depth_and_eligible_mask():
    C, (P, C1, C2, C3, G), _ = _planted(np.random.default_rng(2))
    shallow = build_families(C, max_depth=1)
    f = next(x for x in shallow.families if x.parent == P)
    assert (f.members, f.depth) == ([P, C1, C2, C3], 1)

    eligible = np.ones(C.shape[0], dtype=bool)
    eligible[C2] = False
    masked = build_families(C, eligible=eligible)
    f = next(x for x in masked.families if x.parent == P)
    assert f.members == [P, C1, C3, G]
    assert masked.parent[C2] == -1 and masked.family[C2] == -1

    # One child left: P heads no family any more (a chain is not a family).
    eligible[C3] = False
    chain = build_families(C, eligible=eligible)
    assert all(x.parent != P for x in chain.families)
    assert chain.parent[C1] == P and chain.parent[G] == C1


def _nested_case():
    """P with children A and B; A with four children a1..a4, each a quarter of A: P's family
    {P, A, B, a1..a4} and A's family {A, a1..a4} overlap with Jaccard 5/7."""
    rng = np.random.default_rng(4)
    block = rng.permutation(800)
    P, A, B = 0, 1, 2
    fires = {P: block, A: block[:500], B: block[500:]}
    for q in range(4):
        fires[3 + q] = block[q * 125 : (q + 1) * 125]
    val, idx = _codes_from_sets(3000, fires, W=4)
    return cooccurrence(val, idx, 7)


def test_near_duplicate_families_are_merged():
    C = _nested_case()
    kept_apart = build_families(C, merge_jaccard=0.75)
    assert [(f.parent, f.members, f.depth) for f in kept_apart.families] == [
        (0, [0, 1, 2, 3, 4, 5, 6], 2),
        (1, [1, 3, 4, 5, 6], 1),
    ]
    # A's children report the smaller family, A too.
    assert kept_apart.family.tolist() == [0, 1, 0, 1, 1, 1, 1]

    merged = build_families(C)  # 5/7 > 0.6
    assert [(f.id, f.parent, f.members, f.depth) for f in merged.families] == [
        (0, 0, [0, 1, 2, 3, 4, 5, 6], 2)
    ]
    assert merged.family.tolist() == [0] * 7


def test_min_share_drops_weak_links():
    rng = np.random.default_rng(6)
    block = rng.permutation(1000)
    # Children share only 5% of their papers with the general feature.
    fires = {0: block[:400]}
    for c in (1, 2, 3):
        own = np.arange(1000 + 500 * c, 1190 + 500 * c)
        fires[c] = np.concatenate([own, block[c * 10 : c * 10 + 10]])
    val, idx = _codes_from_sets(3000, fires, W=4)
    C = cooccurrence(val, idx, 4)
    assert build_families(C).families == []
    assert [f.members for f in build_families(C, min_share=0.04).families] == [[0, 1, 2, 3]]


def test_summarize_counts():
    C = _nested_case()
    fam = build_families(C, merge_jaccard=0.75)
    s = summarize(fam, n_live=10)
    assert s == {
        "families": 2,
        "family_size_mean": 6.0,
        "family_size_max": 7,
        "family_size_hist": {5: 1, 7: 1},
        "in_family_share": 0.7,
    }
    empty = summarize(build_families(sp.csr_matrix((5, 5), dtype=np.int32)), n_live=0)
    assert empty["families"] == 0 and empty["in_family_share"] == 0.0


def test_clean_features_need_every_threshold():
    rule = CleanRule(min_f1=0.6, min_pearson=0.5, max_density=0.2)
    f1 = np.array([0.9, 0.59, 0.9, 0.9, np.nan, 0.6, 0.9])
    r = np.array([0.8, 0.8, 0.49, 0.8, 0.8, 0.5, 0.8])
    density = np.array([0.1, 0.1, 0.1, 0.21, 0.1, 0.2, 0.0])
    # Below F1, below r, too dense, unscored, at every bound (kept), dead.
    assert clean_features(f1, r, density, rule).tolist() == [
        True, False, False, False, False, True, False,
    ]  # fmt: skip


def test_features_below_the_clean_rule_stay_out_of_families_but_keep_their_links():
    C, (P, C1, C2, C3, G), _ = _planted(np.random.default_rng(2))
    n = C.shape[0]
    density = C.diagonal() / 3000
    f1 = np.full(n, 0.9)
    f1[C2] = 0.3  # C2's label predicts little: not clean
    clean = clean_features(f1, np.full(n, 0.9), density, CleanRule(0.5, 0.5, 0.5))
    assert not clean[C2] and clean[[P, C1, C3, G]].all()
    fam = build_families(C, eligible=clean)
    f = next(x for x in fam.families if x.parent == P)
    assert f.members == [P, C1, C3, G]
    assert fam.family[C2] == -1 and fam.parent[C2] == -1
    s = summarize(fam, n_live=int((density > 0).sum()), clean_N=clean)
    assert s["clean_features"] == int(clean.sum()) == 34
    assert s["clean_share"] == pytest.approx(34 / 35)


def test_the_clean_rule_is_declared_once_in_the_features_params():
    from pydantic import ValidationError

    from tasks.features.params import FeaturesParams

    params = FeaturesParams(clean_min_f1=0.7, clean_min_pearson=0.6, clean_max_density=0.1)
    assert params.clean_rule() == CleanRule(min_f1=0.7, min_pearson=0.6, max_density=0.1)
    default = FeaturesParams.model_fields
    assert FeaturesParams().clean_rule() == CleanRule(
        default["clean_min_f1"].default,
        default["clean_min_pearson"].default,
        default["clean_max_density"].default,
    )
    with pytest.raises(ValidationError, match="clean_min_f1"):
        FeaturesParams(clean_min_f1=1.5)
