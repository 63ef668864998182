"""Feature families: co-occurrence counts over the corpus, a maximum spanning forest, families.

As in O'Neill et al. (arXiv 2408.00657, sec. 5): features are linked by how often they fire
together relative to their own counts (C_ij / C_ii = P(j | i); links whose larger share is
under 0.1 dropped); a maximum spanning forest over those links, oriented from the denser
feature to the sparser one, gives each feature at most one parent; a feature with at least
two children heads a family (itself and its descendants up to ``max_depth`` levels down);
families whose members overlap with Jaccard > ``merge_jaccard`` are merged. Unlike the
paper's code, the forest is built once (not again after removing the heads): every node
with two or more children already heads a family of its own.

As in the paper's code, only "clean" features take part (:func:`clean_features`): a label
that predicts held-out papers (F1 and Pearson r at least the rule's) on a feature that is
not too dense (its ``get_clean_labels``: F1 >= 0.8, r >= 0.8, density < 0.2, on LLM labels).
A feature whose label says little would otherwise join families by co-firing alone. On
2,000 papers of the cs.LG sample, labels scored by embedding, the defaults (F1 >= 0.5,
r >= 0.5, density <= 0.2) keep 18-26% of the live features; the paper's 0.8 keeps 2-3%.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

# Pair contributions per chunk (rows x W^2): bounds the chunk's product at ~2^25 entries
# (int32 index and count, 8 bytes each) whatever the code width.
_CHUNK_PAIRS = 1 << 25


@dataclass(frozen=True)
class CleanRule:
    """Which features may join families; declared with defaults and help in
    :class:`tasks.features.params.FeaturesParams` (``clean_*``)."""

    min_f1: float
    min_pearson: float
    max_density: float


def clean_features(
    f1_N: np.ndarray, pearson_N: np.ndarray, density_N: np.ndarray, rule: CleanRule
) -> np.ndarray:
    """[n] bool: live features whose label's held-out F1 and Pearson r reach the rule's and
    whose density is at most its ``max_density``; an unscored label (NaN) is not clean."""
    f1 = np.asarray(f1_N, dtype=np.float64)
    r = np.asarray(pearson_N, dtype=np.float64)
    density = np.asarray(density_N, dtype=np.float64)
    # NaN compares False, so an unscored label fails every test.
    return (
        (f1 >= rule.min_f1)
        & (r >= rule.min_pearson)
        & (density > 0)
        & (density <= rule.max_density)
    )


def _binary_codes(values_NW: np.ndarray, indices_NW: np.ndarray, n_latents: int) -> sp.csr_matrix:
    """[rows, n] 0/1 CSR of the firing latents; a latent held twice by a row counts once."""
    rows = values_NW.shape[0]
    idx = np.where(values_NW != 0, indices_NW, n_latents).astype(np.int64, copy=False)
    idx = np.sort(idx, axis=1)
    keep = idx < n_latents
    keep[:, 1:] &= idx[:, 1:] != idx[:, :-1]
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    cols = idx[keep].astype(np.int32)
    data = np.ones(cols.size, dtype=np.int32)
    return sp.csr_matrix((data, cols, indptr), shape=(rows, n_latents))


def cooccurrence(
    values_NW: np.ndarray,
    indices_NW: np.ndarray,
    n_latents: int,
    chunk_rows: int | None = None,
) -> sp.csr_matrix:
    """[n, n] int32 CSR: (i, j) = papers whose code holds both i and j; (i, i) = i's count.
    Slots with value 0 are unused; a latent held twice by one code counts once.

    Rows go through ``chunk_rows`` at a time (default: about 2^25 pairs per chunk), so the
    peak beside the result is one chunk's product, never the [N, n] or N x W^2 pairs.
    """
    values_NW = np.asarray(values_NW)
    indices_NW = np.asarray(indices_NW)
    N, W = values_NW.shape
    if chunk_rows is None:
        chunk_rows = max(256, _CHUNK_PAIRS // max(W * W, 1))
    total = sp.csr_matrix((n_latents, n_latents), dtype=np.int32)
    for start in range(0, N, chunk_rows):
        stop = min(start + chunk_rows, N)
        A = _binary_codes(values_NW[start:stop], indices_NW[start:stop], n_latents)
        part = (A.T.tocsr() @ A).astype(np.int32, copy=False)
        total = part if total.nnz == 0 else total + part
    total = sp.csr_matrix(total, dtype=np.int32)
    total.sum_duplicates()
    total.sort_indices()
    return total


def top_cooccurring(counts: sp.csr_matrix, i: int, m: int) -> list[tuple[int, float]]:
    """The ``m`` latents j != i with the highest C_ij / C_ii = P(j fires | i fires)."""
    counts = sp.csr_matrix(counts)
    lo, hi = counts.indptr[i], counts.indptr[i + 1]
    cols = counts.indices[lo:hi].astype(np.int64)
    data = counts.data[lo:hi]
    own = float(counts[i, i])
    keep = (cols != i) & (data > 0)
    cols, data = cols[keep], data[keep]
    if own <= 0 or cols.size == 0:
        return []
    share = data / own
    order = np.lexsort((cols, -share))[:m]
    return [(int(cols[o]), float(share[o])) for o in order]


def top_cooccurring_all(
    counts: sp.csr_matrix, m: int, block_nnz: int = 1 << 22
) -> list[list[tuple[int, float]]]:
    """:func:`top_cooccurring` for every latent at once (ties: lower latent id first).

    Rows go in blocks of about ``block_nnz`` stored entries, so the sort's temporaries
    stay small beside the matrix.
    """
    counts = sp.csr_matrix(counts)
    n = counts.shape[0]
    diag = counts.diagonal().astype(np.int64)
    top = int(counts.data.max()) + 1 if counts.nnz else 1
    out: list[list[tuple[int, float]]] = []
    r0 = 0
    while r0 < n:
        r1 = int(np.searchsorted(counts.indptr, counts.indptr[r0] + block_nnz, side="right"))
        r1 = min(max(r1 - 1, r0 + 1), n)
        lo, hi = counts.indptr[r0], counts.indptr[r1]
        rows = np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(counts.indptr[r0 : r1 + 1]))
        cols = counts.indices[lo:hi].astype(np.int64)
        data = counts.data[lo:hi].astype(np.int64)
        off = (rows + r0 != cols) & (data > 0)
        rows, cols, data = rows[off], cols[off], data[off]
        # Within a row the share's order is the count's: one int64 key (row, -count, col)
        # sorts the block at once, several times faster than a lexsort over float shares.
        order = np.argsort((rows * top + (top - 1 - data)) * n + cols)
        rows, cols, data = rows[order], cols[order], data[order]
        starts = np.searchsorted(rows, np.arange(r1 - r0 + 1))
        keep = np.arange(rows.size) - starts[rows] < m
        rows, cols = rows[keep], cols[keep]
        share = data[keep] / np.maximum(diag[rows + r0], 1)
        bounds = np.searchsorted(rows, np.arange(r1 - r0 + 1)).tolist()
        cols_l, share_l = cols.tolist(), share.tolist()
        out.extend(list(zip(cols_l[a:b], share_l[a:b], strict=True)) for a, b in pairwise(bounds))
        r0 = r1
    return out


def maximum_spanning_forest(
    u: np.ndarray, v: np.ndarray, weight: np.ndarray, n: int, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the edges (u[e], v[e], weight[e]) that form a maximum spanning forest.

    Ties in ``weight`` go to the higher ``tiebreak``, then to the lower (min, max) endpoint
    pair, so the forest is deterministic. Edges are assumed distinct and u != v.
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    if u.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    second = np.zeros_like(weight) if tiebreak is None else np.asarray(tiebreak, np.float64)
    order = np.lexsort((hi, lo, -second, -weight))
    # Kruskal only looks at the order of the edges; ranks 1..E as weights make csgraph's
    # minimum spanning tree a maximum one under that exact order, with no float ties, and
    # keep every kept edge nonzero (csgraph reads 0 as "no edge").
    rank = np.empty(u.size, dtype=np.float64)
    rank[order] = np.arange(1, u.size + 1, dtype=np.float64)
    graph = sp.csr_matrix((rank, (lo, hi)), shape=(n, n))
    tree = csgraph.minimum_spanning_tree(graph).tocoo()
    return np.sort(order[tree.data.astype(np.int64) - 1])


@dataclass(frozen=True)
class Family:
    id: int
    parent: int
    members: list[int]  # the parent first, the others in latent order
    depth: int  # levels below the parent present among the members


@dataclass
class Families:
    """Families and the oriented spanning forest they come from.

    ``parent[i]``/``children[i]`` are i's links in the forest (-1 / [] outside it): also
    for features in no family, e.g. the only child of a feature with one child.
    ``family[i]``: the smallest family holding i (ties: the lower family id), -1 if none;
    so a family's head that is also a member of its parent's family reports its own.
    """

    families: list[Family]
    parent: np.ndarray  # [n] int64
    children: list[list[int]]
    family: np.ndarray  # [n] int64
    # (child, parent) edges of the forest with their weight, for checks.
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    edge_weight: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _edges(
    counts: sp.csr_matrix, keep_node: np.ndarray, min_share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle pairs of kept nodes with containment >= min_share: (i, j, weight,
    containment), weight = sqrt(P(j|i) P(i|j)), containment = max(P(j|i), P(i|j))."""
    diag = counts.diagonal().astype(np.float64)
    upper = sp.triu(counts, k=1, format="coo")
    i, j, c = upper.row.astype(np.int64), upper.col.astype(np.int64), upper.data
    ok = keep_node[i] & keep_node[j] & (c > 0)
    i, j, c = i[ok], j[ok], c[ok].astype(np.float64)
    contain = c / np.minimum(diag[i], diag[j])
    ok = contain >= min_share
    i, j, c, contain = i[ok], j[ok], c[ok], contain[ok]
    # The tree's weight is sqrt(P(j|i) P(i|j)) = containment x sqrt(sparser / denser count),
    # not the containment max(P(j|i), P(i|j)) = P(denser | sparser) alone: containment is
    # transitive, so for G inside C inside P the grandchild link G-P weighs as much as G-C
    # (both 1) and outweighs a slightly noisy C-P, and the tree would hang C under G and
    # cut it from P. The geometric mean is multiplicative along such a chain (w(G,P) =
    # w(G,C) w(C,P)), so the direct links win, and among equally tight containers the one
    # closest in size, the direct parent. It is symmetric; the orientation (denser ->
    # sparser) is applied after, and containment breaks ties.
    weight = c / np.sqrt(diag[i] * diag[j])
    return i, j, weight, contain


def _denser(a: np.ndarray, b: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Per pair, True where a is the parent: the denser one, the lower id on a tie."""
    return (density[a] > density[b]) | ((density[a] == density[b]) & (a < b))


def build_families(
    counts: sp.csr_matrix,
    *,
    min_share: float = 0.1,
    max_depth: int = 3,
    merge_jaccard: float = 0.6,
    eligible: np.ndarray | None = None,
) -> Families:
    """Families from co-occurrence ``counts`` ([n, n], as from :func:`cooccurrence`).

    Only live features (nonzero count) in ``eligible`` (default: all) take part. Pairs whose
    containment max(P(j|i), P(i|j)) is below ``min_share`` get no edge (the paper's 0.1 on
    P(j|i)); the forest maximises sqrt(P(j|i) P(i|j)) (see :func:`_edges`).
    """
    counts = sp.csr_matrix(counts)
    n = counts.shape[0]
    density = counts.diagonal().astype(np.int64)
    keep = density > 0
    if eligible is not None:
        keep &= np.asarray(eligible, dtype=bool)

    i, j, weight, contain = _edges(counts, keep, min_share)
    chosen = maximum_spanning_forest(i, j, weight, n, tiebreak=contain)
    i, j, weight, contain = i[chosen], j[chosen], weight[chosen], contain[chosen]
    i_is_parent = _denser(i, j, density)
    par = np.where(i_is_parent, i, j)
    chi = np.where(i_is_parent, j, i)

    # A feature between two denser tree neighbours would get two parents; it keeps the
    # stronger link (same order as the forest) and the other edge leaves the tree.
    order = np.lexsort((par, -contain, -weight, chi))
    par, chi, weight = par[order], chi[order], weight[order]
    _, first = np.unique(chi, return_index=True)
    par, chi, weight = par[first], chi[first], weight[first]

    parent = np.full(n, -1, dtype=np.int64)
    parent[chi] = par
    children: list[list[int]] = [[] for _ in range(n)]
    for p, c in sorted(zip(par.tolist(), chi.tolist(), strict=True)):
        children[p].append(c)

    level = _levels(parent, children)
    raw = []
    for head in range(n):
        if len(children[head]) < 2:
            continue
        members, depth = _descendants(head, children, max_depth)
        raw.append((head, members, depth))

    families = _merge(raw, density, level, merge_jaccard)
    family = np.full(n, -1, dtype=np.int64)
    best_size = np.full(n, np.iinfo(np.int64).max)
    for fam in families:
        m = np.asarray(fam.members)
        better = len(fam.members) < best_size[m]
        family[m[better]] = fam.id
        best_size[m[better]] = len(fam.members)
    return Families(
        families=families,
        parent=parent,
        children=children,
        family=family,
        edges=np.stack([chi, par], axis=1) if chi.size else np.zeros((0, 2), np.int64),
        edge_weight=weight,
    )


def _levels(parent: np.ndarray, children: list[list[int]]) -> np.ndarray:
    """Each node's distance from the root of its tree."""
    level = np.zeros(parent.size, dtype=np.int64)
    queue = deque(int(r) for r in np.flatnonzero(parent < 0))
    while queue:
        node = queue.popleft()
        for c in children[node]:
            level[c] = level[node] + 1
            queue.append(c)
    return level


def _descendants(head: int, children: list[list[int]], max_depth: int) -> tuple[list[int], int]:
    members, frontier, depth = [head], [head], 0
    while frontier and depth < max_depth:
        frontier = [c for node in frontier for c in children[node]]
        if frontier:
            depth += 1
            members.extend(frontier)
    return members, depth


def _merge(
    raw: list[tuple[int, list[int], int]],
    density: np.ndarray,
    level: np.ndarray,
    merge_jaccard: float,
) -> list[Family]:
    """Merge families whose member sets overlap with Jaccard > merge_jaccard, to a fixpoint."""
    groups = [sorted(set(members)) for _, members, _ in raw]
    n = density.size
    while len(groups) > 1:
        sizes = np.array([len(g) for g in groups], dtype=np.int64)
        rows = np.repeat(np.arange(len(groups)), sizes)
        cols = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups])
        M = sp.csr_matrix((np.ones(cols.size, np.int64), (rows, cols)), shape=(len(groups), n))
        inter = sp.triu(M @ M.T, k=1, format="coo")
        a, b, both = inter.row, inter.col, inter.data
        jac = both / (sizes[a] + sizes[b] - both)
        hit = jac > merge_jaccard
        if not hit.any():
            break
        link = sp.csr_matrix((np.ones(hit.sum()), (a[hit], b[hit])), shape=(len(groups),) * 2)
        _, label = csgraph.connected_components(link, directed=False)
        merged: dict[int, set[int]] = {}
        for g, lab in zip(groups, label.tolist(), strict=True):
            merged.setdefault(lab, set()).update(g)
        groups = [sorted(s) for s in merged.values()]

    out = []
    for g in groups:
        arr = np.asarray(g, dtype=np.int64)
        # Densest member, lower id on a tie: the same rule that orients the tree, so the
        # merged family's parent is the common ancestor of its members.
        head = int(arr[np.lexsort((arr, -density[arr]))[0]])
        depth = int(level[arr].max() - level[head])
        out.append((head, [head] + [m for m in g if m != head], depth))
    out.sort(key=lambda f: f[0])
    return [Family(id=k, parent=h, members=m, depth=d) for k, (h, m, d) in enumerate(out)]


def summarize(families: Families, n_live: int, clean_N: np.ndarray | None = None) -> dict:
    """Counts for ``features.json``'s summary; ``clean_N`` ([n] bool, see
    :func:`clean_features`) adds how many features may join families."""
    sizes = [len(f.members) for f in families.families]
    hist: dict[int, int] = {}
    for s in sorted(sizes):
        hist[s] = hist.get(s, 0) + 1
    in_family = int((families.family >= 0).sum())
    return {
        "families": len(sizes),
        "family_size_mean": float(np.mean(sizes)) if sizes else 0.0,
        "family_size_max": int(max(sizes)) if sizes else 0,
        "family_size_hist": hist,
        "in_family_share": in_family / n_live if n_live else 0.0,
    } | _clean_counts(clean_N, n_live)


def _clean_counts(clean_N: np.ndarray | None, n_live: int) -> dict:
    if clean_N is None:
        return {}
    n_clean = int(np.asarray(clean_N, dtype=bool).sum())
    return {"clean_features": n_clean, "clean_share": n_clean / n_live if n_live else 0.0}
