"""Steerable search (:mod:`tasks.search.engine`) against plain references, on the axis
SAE of :mod:`tests.tasks.search.axes`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.search.limits import ADD_STRENGTH, MAX_QUERY_CHARS, MAX_STRENGTH, SearchInputError
from tests.tasks.search.axes import N_PAPERS, QUERY, D, K, engine_for, make_corpus, unit


@pytest.fixture()
def corpus():
    return make_corpus()


def reference(x: np.ndarray, q: np.ndarray, top: int) -> list[int]:
    scores = x @ unit(q)
    return sorted(range(len(x)), key=lambda i: (-scores[i], i))[:top]


def test_an_unedited_query_gives_exactly_the_dense_results(corpus):
    eng, _, _ = engine_for(corpus)
    result = eng.search("q", top=20)
    assert [h.row for h in result.hits] == reference(corpus[2], QUERY, 20)
    x = corpus[2]
    for h in result.hits:
        assert h.score == pytest.approx(float(x[h.row] @ QUERY), abs=1e-4)
        assert h.id == corpus[0][h.row] and h.title == corpus[1][h.row]
    assert not result.edited


def test_the_query_features_are_its_code_in_units_of_its_strongest_activation(corpus):
    eng, _, _ = engine_for(corpus)
    result = eng.search("q")
    # The axis SAE's code: the k largest coordinates, as they are; the largest is 1.
    top = np.argsort(-QUERY)[:K]
    assert [f.id for f in result.features] == list(top)
    for f in result.features:
        assert f.strength == pytest.approx(QUERY[f.id] / QUERY.max(), abs=1e-3)
        assert f.label == [f"term{f.id}", f"other{f.id}"] and not f.edited


@pytest.mark.parametrize("threshold", [0.0, 0.05])
@pytest.mark.parametrize("edits", [{6: 4.0}, {0: 0.0}, {1: 0.5, 9: 8.0}, {2: MAX_STRENGTH}])
def test_edits_raise_along_the_decoder_and_lower_by_reflecting(corpus, edits, threshold):
    """Raising adds (w - own) units of the decoder row; lowering takes the search vector's
    component along it from c (the larger of x . W_dec[i] and the activation) at the
    query's own strength to -c at 0. A threshold makes activations smaller than x . W_dec."""
    eng, _, _ = engine_for(corpus)
    with torch.no_grad():
        eng.model.b_lat.fill_(-threshold)
    pre = QUERY - threshold
    z = np.where(np.isin(np.arange(D), np.argsort(-pre)[:K]), np.maximum(pre, 0), 0.0)
    unit = z.max()
    q = QUERY.astype(np.float64).copy()
    for fid, w in edits.items():
        if w * unit >= z[fid]:
            q[fid] += w * unit - z[fid]
        else:
            along = max(QUERY[fid], z[fid])
            q[fid] -= 2 * along * (1 - w * unit / z[fid])
    result = eng.search("q", edits, top=15)
    assert [h.row for h in result.hits] == reference(corpus[2], q, 15)
    assert result.edited
    shown = {f.id: f for f in result.features}
    for fid, w in edits.items():
        assert shown[fid].edited and shown[fid].strength == pytest.approx(w, abs=1e-3)


def test_a_feature_added_at_the_default_strength_brings_its_papers_into_the_top_10(corpus):
    ids, titles, x = corpus
    x = x.copy()
    # Ten papers on the query's subject that also carry feature 6, which the query lacks:
    # near it (about its 50th paper), yet not among its top 10.
    x[:10] = unit(QUERY + 1.2 * np.eye(D)[6] + 0.02 * np.arange(10)[:, None] / 10)
    eng, _, _ = engine_for((ids, titles, x))
    plain = [h.row for h in eng.search("q", top=10).hits]
    assert not set(plain) & set(range(10))
    hits = eng.search("q", {6: ADD_STRENGTH}, top=10).hits
    assert {h.row for h in hits} == set(range(10))
    assert all(6 in h.drivers for h in hits)


def test_removing_the_strongest_feature_takes_its_papers_out_of_the_top_10(corpus):
    ids, titles, x = corpus
    x = x.copy()
    # Ten papers on the query's subject with more of feature 0, its strongest: its top 10.
    x[:10] = unit(QUERY + 0.3 * np.eye(D)[0] + 0.02 * np.arange(10)[:, None] / 10)
    eng, _, _ = engine_for((ids, titles, x))
    strongest = eng.search("q").features[0].id
    assert strongest == 0
    assert {h.row for h in eng.search("q", top=10).hits} == set(range(10))
    removed = eng.search("q", {strongest: 0.0}, top=10).hits
    assert not {h.row for h in removed} & set(range(10))


def test_drivers_are_the_shared_features_strongest_first(corpus):
    eng, _, mean_act = engine_for(corpus)
    result = eng.search("q", top=5)
    x = corpus[2]
    query = {f.id for f in result.features}
    for h in result.hits:
        paper = np.argsort(-x[h.row])[:K]
        shared = [i for i in paper if i in query]
        # Each side in units of the feature's typical activation: how typical of both.
        product = {i: QUERY[i] / mean_act[i] * x[h.row][i] / mean_act[i] for i in shared}
        assert h.drivers == sorted(shared, key=lambda i: -product[i])


def test_the_query_is_embedded_once_for_a_page_of_slider_moves(corpus):
    eng, emb, _ = engine_for(corpus)
    for w in (1.0, 2.0, 3.0):
        eng.search("q", {5: w})
    assert emb.calls == 1


def test_families_of_the_query_features_offer_the_members_nearest_to_firing(corpus):
    eng, _, _ = engine_for(corpus)
    result = eng.search("q")  # features 0, 1, 2: family 0 holds feature 0, family 7 none
    assert [f["id"] for f in result.families] == [0]
    (fam,) = result.families
    assert fam["label"] == ["term0", "other0"] and fam["size"] == 3
    assert [m["id"] for m in fam["members"]] == [4, 5]  # 0 is the query's already
    q5 = QUERY.copy()
    q5[5] = 0.3  # now 5 is nearer to firing than 4
    eng, _, _ = engine_for(corpus, vectors={"q": unit(q5)})
    (fam,) = eng.search("q").families
    assert fam["members"] == [
        {"id": 5, "label": ["term5", "other5"]},
        {"id": 4, "label": ["term4", "other4"]},
    ]
    # A feature added by hand brings its family along.
    assert [f["id"] for f in eng.search("q", {8: 2.0}).families] == [7, 0]


def test_without_features_json_ids_alone_and_units_from_a_sample(corpus):
    eng, _, _ = engine_for(corpus, doc=False)
    result = eng.search("q", {6: 2.0})
    assert all(f.label == [] for f in result.features) and result.families == []
    # Feature 6's unit: its mean activation over the papers where it fires.
    x = corpus[2]
    fires = np.argsort(-x, axis=1)[:, :K]
    acts = [x[r, 6] for r in range(N_PAPERS) if 6 in fires[r]]
    assert float(eng.unit_N[6]) == pytest.approx(np.mean(acts), rel=1e-4)


@pytest.mark.parametrize(
    ("query", "strengths", "top", "says"),
    [
        ("", {}, 10, "the query is empty"),
        ("   \n", {}, 10, "the query is empty"),
        ("x" * (MAX_QUERY_CHARS + 1), {}, 10, f"at most {MAX_QUERY_CHARS}"),
        ("q", {D: 1.0}, 10, f"feature {D} does not exist in axes_3_12"),
        ("q", {-1: 1.0}, 10, "feature -1 does not exist"),
        ("q", {"abc": 1.0}, 10, "feature id 'abc' is not an integer"),
        ("q", {3: "lots"}, 10, "strength 'lots' is not a number"),
        ("q", {3: float("nan")}, 10, f"outside 0 to {MAX_STRENGTH:g}"),
        ("q", {3: -1}, 10, f"outside 0 to {MAX_STRENGTH:g}"),
        ("q", {3: MAX_STRENGTH + 1}, 10, f"outside 0 to {MAX_STRENGTH:g}"),
        ("q", {}, 0, "top must be 1 to 100"),
        ("q", {}, 101, "top must be 1 to 100"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(corpus, query, strengths, top, says):
    eng, emb, _ = engine_for(corpus)
    with pytest.raises(SearchInputError, match=says) as info:
        eng.search(query, strengths, top)
    assert info.value.status == 400
    assert emb.calls == 0  # refused before the slow part
