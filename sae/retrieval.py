"""Retrieval fidelity: does search through the SAE find what search with the embeddings finds?

Held-out papers are the queries, a corpus of (training) papers is searched; nothing is
excluded, since no query is in the corpus. Search is exact: a query's top k corpus rows
by dot product (the embeddings are unit-norm rows, so this is cosine search for the
originals; reconstructions are searched as they are, not renormalised). Ties go to the
lower corpus index, in every path, so search with x against itself scores exactly 1.

With T = top_k(x . corpus) the original search and F the search under test, per query:

    recall@k = |F ∩ T| / k
    nDCG@k   = DCG / IDCG,  DCG = sum_{r=1..k} rel(F_r) / log2(r + 1),
                            rel(j) = 1 if j in T else 0,
                            IDCG = sum_{r=1..k} 1 / log2(r + 1)  (T in its own order)

each averaged over queries. Three searches F are measured (:class:`RetrievalFidelity`):
x_hat against the original corpus, x_hat against the reconstructed corpus, and the codes
alone: score(q, j) = sum over latents l in both codes of v_q[l] * v_j[l], an inverted
index over latent ids (the features as terms, activations as weights).

Scores are held ``chunk`` queries at a time ([chunk, N] float32: 1.2 GB at chunk 1024,
N = 300k), in one buffer reused by every search; the corpus reconstruction [N, d] and its
codes (N x w values and ids) are built ``batch_size`` rows at a time.
:func:`retrieval_fidelity` bounds that by N no more: it reads the corpus
``corpus_block`` rows at a time (reconstruction, codes and [chunk, block] scores of one
block) and keeps each query's best k so far, and it may measure a random sample of the
queries, recording each mean's standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sae.codes import SparseCodes
from sae.data import MappedRows, as_matrix, as_rows, row_chunks
from sae.errors import DataError


@dataclass(frozen=True)
class RetrievalFidelity:
    """Held-out retrieval metrics; "at_10" names the default ``k_search`` (the values are
    @k_search when another is asked for). See the module doc for the formulas."""

    recall_at_10: float
    """recall@k of top_k(x_hat . corpus) against top_k(x . corpus)."""
    ndcg_at_10: float
    """nDCG@k of the same ranking, rel = 1 on the original top k."""
    corpus_recall_at_10: float
    """recall@k of top_k(x_hat . corpus_hat) against top_k(x . corpus)."""
    corpus_ndcg_at_10: float
    """nDCG@k of the same ranking."""
    sparse_recall_at_10: float
    """recall@k of search with the codes alone (an inverted index) against
    top_k(x . corpus); NaN when no codes were given."""
    n_queries: int = 0
    """Queries measured: every held-out row, or a random sample of them."""
    n_queries_total: int = 0
    """Held-out rows the queries were drawn from."""
    stderr: tuple[float, ...] = ()
    """Each metric's standard error as an estimate of its mean over all
    ``n_queries_total`` queries, in field order: s / sqrt(q) * sqrt((Q - q) / (Q - 1))
    (0 when every query was measured, NaN where the metric is or for one query)."""

    def as_dict(self) -> dict[str, float]:
        """The metrics under their MLflow names."""
        return {_MLFLOW_NAMES[name]: getattr(self, name) for name in _MLFLOW_NAMES}

    def sampling(self) -> dict[str, float]:
        """How many queries the metrics rest on and each one's standard error, as
        ``retrieval_queries``, ``retrieval_queries_total`` and ``{metric}_stderr``."""
        errors = self.stderr or (math.nan,) * len(_MLFLOW_NAMES)
        return {
            "retrieval_queries": self.n_queries,
            "retrieval_queries_total": self.n_queries_total,
            **{f"{name}_stderr": e for name, e in zip(_MLFLOW_NAMES.values(), errors, strict=True)},
        }

    def summary(self) -> str:
        """``recall@10 0.608 +- 0.012 (95%), sparse 0.41 +- 0.01; 2000 of 135000 queries``."""
        se = self.stderr or (math.nan,) * len(_MLFLOW_NAMES)
        return (
            f"recall@10 {self.recall_at_10:.4f} +- {1.96 * se[0]:.4f} (95%), sparse "
            f"{self.sparse_recall_at_10:.4f} +- {1.96 * se[4]:.4f}; "
            f"{self.n_queries} of {self.n_queries_total} queries"
        )


_MLFLOW_NAMES = {
    "recall_at_10": "retrieval_recall_at_10",
    "ndcg_at_10": "retrieval_ndcg_at_10",
    "corpus_recall_at_10": "retrieval_corpus_recall_at_10",
    "corpus_ndcg_at_10": "retrieval_corpus_ndcg_at_10",
    "sparse_recall_at_10": "sparse_recall_at_10",
}

RETRIEVAL_METRIC_NAMES: tuple[str, ...] = tuple(_MLFLOW_NAMES.values())
"""The MLflow names of :class:`RetrievalFidelity`'s fields, in its order."""


# ------------------------------------------------------------------ ranking
def top_k_rows(scores_CN: torch.Tensor, k: int) -> torch.Tensor:
    """[C, k] int64: each row's k highest columns, by score descending, then column ascending.

    ``topk`` alone picks arbitrarily among equal scores; a (k+1)-th score equal to the
    k-th marks a row whose last places are contested, and those rows (rare for dense
    scores) are redone exactly: every column above the k-th score, then the lowest
    columns at it.
    """
    N = scores_CN.shape[1]
    if not 0 < k <= N:
        raise ValueError(f"k must lie in [1, {N}] (the number of columns), got {k}")
    vals, idx = scores_CN.topk(min(k + 1, N), dim=1, sorted=True)
    if k < N:
        contested = (vals[:, k] == vals[:, k - 1]).nonzero().squeeze(1).tolist()
        vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
        for r in contested:
            row, kth = scores_CN[r], vals[r, k - 1]
            above = (row > kth).nonzero().squeeze(1)
            at = (row == kth).nonzero().squeeze(1)[: k - above.numel()]  # ascending columns
            idx[r] = torch.cat([above, at])
            vals[r] = row[idx[r]]
    # Within the k, equal scores in column order: sort by column, then stably by score.
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    _, perm = vals.sort(dim=1, descending=True, stable=True)
    return idx.gather(1, perm)


@torch.no_grad()
def search(
    queries_QD: torch.Tensor,
    corpus_ND: torch.Tensor,
    k: int = 10,
    chunk: int = 1024,
) -> torch.Tensor:
    """Exact top-k search by dot product: [Q, k] int64 corpus rows, best first (ties to
    the lower row); ``chunk`` queries' scores [chunk, N] at a time."""
    _check_chunk(chunk)
    Q, N = queries_QD.shape[0], corpus_ND.shape[0]
    if queries_QD.shape[1] != corpus_ND.shape[1]:
        raise ValueError(
            f"queries have dimension {queries_QD.shape[1]}, corpus rows {corpus_ND.shape[1]}"
        )
    _check_k(k, N)
    queries_QD, corpus_ND = queries_QD.float(), corpus_ND.float()
    buf = _buffer(min(chunk, Q), N, corpus_ND)
    found = [_dense_top_k(queries_QD[s : s + chunk], corpus_ND, k, buf) for s in range(0, Q, chunk)]
    return torch.cat(found)


def _dense_top_k(q_CD, corpus_ND, k, buf) -> torch.Tensor:
    scores = buf[: q_CD.shape[0]]
    torch.matmul(q_CD, corpus_ND.T, out=scores)
    return top_k_rows(scores, k)


# ----------------------------------------------------------- sparse search
@dataclass(frozen=True)
class InvertedIndex:
    """The corpus codes by latent: latent l's postings are ``docs[offsets[l]:offsets[l+1]]``
    (corpus rows, int64) with weights ``values[...]`` (their activations)."""

    offsets: torch.Tensor
    docs: torch.Tensor
    values: torch.Tensor
    n_docs: int

    @classmethod
    def from_codes(cls, codes: SparseCodes, device: str | torch.device = "cpu") -> InvertedIndex:
        """Postings of the firing slots only (an unused slot's id means nothing), each
        latent's in row order.

        Not :meth:`SparseCodes.by_latent`: its lexsort by value as well made the build of
        300k x 32 codes take 7.6 s on 2 cores; a stable sort of the int32 ids alone, 2 s.
        """
        fire = codes.firing()
        rows = torch.from_numpy(np.nonzero(fire)[0]).to(device)
        lat = torch.from_numpy(codes.indices_NW[fire].astype(np.int32)).to(device)
        vals = torch.from_numpy(codes.values_NW[fire].astype(np.float32)).to(device)
        lat, order = lat.sort(stable=True)
        offsets = torch.zeros(codes.n_latents + 1, dtype=torch.int64, device=device)
        torch.cumsum(torch.bincount(lat, minlength=codes.n_latents), 0, out=offsets[1:])
        return cls(offsets, rows[order], vals[order], codes.n_rows)


@torch.no_grad()
def sparse_search(
    query_codes: SparseCodes,
    index: InvertedIndex,
    k: int = 10,
    chunk: int = 1024,
) -> torch.Tensor:
    """Top-k search by the codes alone: [Q, k] int64 corpus rows, best first (ties, such
    as the 0 of rows sharing no latent, to the lower row).

    score(q, j) = sum_l v_q[l] * v_j[l] over the latents firing in both. Each query's
    row of scores is accumulated from the postings of its own w latents (w * N * w / n
    adds on average, not N * n), query by query, so writes stay within one [N] row.
    """
    _check_chunk(chunk)
    Q, N = query_codes.n_rows, index.n_docs
    _check_k(k, N)
    _check_latents(query_codes, index)
    buf = _buffer(min(chunk, Q), N, index.values)
    found = [
        _sparse_top_k(query_codes, slice(s, s + chunk), index, k, buf) for s in range(0, Q, chunk)
    ]
    return torch.cat(found)


def _sparse_top_k(query_codes: SparseCodes, rows: slice, index: InvertedIndex, k, buf):
    return top_k_rows(_sparse_scores(query_codes, rows, index, buf), k)


def _sparse_scores(query_codes: SparseCodes, rows: slice, index: InvertedIndex, buf):
    """[C, N] the code-overlap scores of queries ``rows`` against ``index``'s rows."""
    values, latents = query_codes.values_NW[rows], query_codes.indices_NW[rows]
    scores = buf[: values.shape[0]]
    scores.zero_()
    offsets = index.offsets.tolist()
    for r, (vals_W, lats_W) in enumerate(zip(values.tolist(), latents.tolist(), strict=True)):
        row = scores[r]
        for v, lat in zip(vals_W, lats_W, strict=True):
            if v > 0:  # 0 marks an unused slot
                lo, hi = offsets[lat], offsets[lat + 1]
                row.index_add_(0, index.docs[lo:hi], index.values[lo:hi], alpha=v)
    return scores


# ------------------------------------------------------------------ metrics
def _discounts(k: int, device) -> torch.Tensor:
    """1 / log2(r + 1) for ranks r = 1..k, float64."""
    return 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=device))


def _hits(found_QK: torch.Tensor, truth_QK: torch.Tensor) -> torch.Tensor:
    """[Q, k] bool: found[q, r] is in truth[q]."""
    if found_QK.shape != truth_QK.shape:
        raise ValueError(f"rankings differ in shape: {found_QK.shape} vs {truth_QK.shape}")
    return (found_QK.unsqueeze(2) == truth_QK.unsqueeze(1)).any(dim=2)


def recall_at_k(found_QK: torch.Tensor, truth_QK: torch.Tensor) -> torch.Tensor:
    """[Q] float64: |found ∩ truth| / k per query (rows of distinct ids)."""
    return _hits(found_QK, truth_QK).double().mean(dim=1)


def ndcg_at_k(found_QK: torch.Tensor, truth_QK: torch.Tensor) -> torch.Tensor:
    """[Q] float64: DCG / IDCG per query, rel = 1 on ``truth``'s k ids (module doc)."""
    disc = _discounts(found_QK.shape[1], found_QK.device)
    return (_hits(found_QK, truth_QK).double() * disc).sum(dim=1) / disc.sum()


# ------------------------------------------------------------- fidelities
@torch.no_grad()
def fidelity_from_reconstructions(
    queries_QD: torch.Tensor,
    queries_hat_QD: torch.Tensor,
    corpus_ND: torch.Tensor,
    corpus_hat_ND: torch.Tensor,
    query_codes: SparseCodes | None = None,
    corpus_codes: SparseCodes | None = None,
    k_search: int = 10,
    chunk: int = 1024,
) -> RetrievalFidelity:
    """:class:`RetrievalFidelity` from reconstructions (and codes) already computed.

    All four matrices float32 on one device; the original search top_k(x . corpus) is
    computed once per chunk and serves all three comparisons. ``sparse_recall_at_10`` is
    NaN unless both codes are given.
    """
    _check_chunk(chunk)
    queries_QD, queries_hat_QD = queries_QD.float(), queries_hat_QD.float()
    corpus_ND, corpus_hat_ND = corpus_ND.float(), corpus_hat_ND.float()
    Q, D = queries_QD.shape
    N = corpus_ND.shape[0]
    for name, got, want in (
        ("queries_hat", queries_hat_QD, queries_QD),
        ("corpus_hat", corpus_hat_ND, corpus_ND),
    ):
        if got.shape != want.shape:
            raise ValueError(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if corpus_ND.shape[1] != D:
        raise ValueError(f"queries have dimension {D}, corpus rows {corpus_ND.shape[1]}")
    _check_k(k_search, N)
    sparse = query_codes is not None and corpus_codes is not None
    if sparse:
        if (query_codes.n_rows, corpus_codes.n_rows) != (Q, N):
            raise ValueError(
                f"codes cover {query_codes.n_rows} queries and {corpus_codes.n_rows} corpus "
                f"rows, expected {Q} and {N}"
            )
        index = InvertedIndex.from_codes(corpus_codes, corpus_ND.device)
        _check_latents(query_codes, index)
    buf = _buffer(min(chunk, Q), N, corpus_ND)
    sums = torch.zeros(5, dtype=torch.float64, device=corpus_ND.device)
    for s in range(0, Q, chunk):
        x, x_hat = queries_QD[s : s + chunk], queries_hat_QD[s : s + chunk]
        truth = _dense_top_k(x, corpus_ND, k_search, buf)
        found = _dense_top_k(x_hat, corpus_ND, k_search, buf)
        sums[0] += recall_at_k(found, truth).sum()
        sums[1] += ndcg_at_k(found, truth).sum()
        found = _dense_top_k(x_hat, corpus_hat_ND, k_search, buf)
        sums[2] += recall_at_k(found, truth).sum()
        sums[3] += ndcg_at_k(found, truth).sum()
        if sparse:
            found = _sparse_top_k(query_codes, slice(s, s + chunk), index, k_search, buf)
            sums[4] += recall_at_k(found, truth).sum()
    means = (sums / Q).tolist()
    if not sparse:
        means[4] = math.nan
    return RetrievalFidelity(*means, Q, Q, tuple(0.0 * m for m in means))


@torch.no_grad()
def retrieval_fidelity(
    model,
    queries_QD,
    corpus_ND,
    k_search: int = 10,
    batch_size: int = 4096,
    chunk: int = 1024,
    corpus_block: int | None = None,
    max_queries: int | None = None,
    seed: int = 0,
) -> RetrievalFidelity:
    """:class:`RetrievalFidelity` of ``model`` with held-out ``queries_QD`` [Q, d_in] over
    ``corpus_ND`` [N, d_in] (tensors, numpy arrays or memmaps, or
    :class:`sae.data.MappedRows`; no query is excluded from the corpus).

    Codes by ``model.encode`` (the inference selection, so BatchTopK by its threshold),
    reconstructions by ``model.decode`` of the same codes, ``batch_size`` rows at a time,
    all on the model's device in float32; search ``chunk`` queries at a time.

    ``corpus_block``: corpus rows read and held at once (their reconstruction, codes and
    [chunk, block] scores: about ``block * (8 d + 24 w + 4 chunk)`` bytes); each query keeps
    its best k so far, ties to the lower row as in one pass, so any block gives the same
    rankings. None: the whole corpus as one block. ``max_queries``: measure a random sample
    of that many queries (drawn with ``seed``) instead of all Q, recording the sample's
    size and each mean's standard error (:attr:`RetrievalFidelity.stderr`).

    Measured on 2 shared CPU cores, Q = 1000, d = 384, n = 3072, k = 32: 4 s at
    N = 20k; 24-47 s at N = 300k (about half encoding the corpus, 6 s each of the three
    dense searches, 2.5 s the sparse one), 2.3 GB above the inputs in one block.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if corpus_block is not None and corpus_block <= 0:
        raise ValueError(f"corpus_block must be positive, got {corpus_block}")
    _check_chunk(chunk)
    corpus_ND = as_rows(corpus_ND)
    if corpus_ND.ndim != 2:
        raise DataError(f"corpus: expected a 2-D [N, d] matrix, got shape {tuple(corpus_ND.shape)}")
    if corpus_ND.shape[1] != model.d_in:
        raise DataError(
            f"corpus: rows have dimension {corpus_ND.shape[1]}, the SAE expects d_in={model.d_in}"
        )
    N, Q = corpus_ND.shape[0], queries_QD.shape[0]
    _check_k(k_search, N)
    device = model.b_pre.device
    picked = _sample(Q, max_queries, seed)
    queries = as_matrix(_pick(queries_QD, picked), model.d_in, what="queries").to(device)
    queries_hat, query_codes = _reconstruct(model, queries, batch_size)
    chunks = [slice(s, s + chunk) for s in range(0, queries.shape[0], chunk)]
    # Per search (original, x_hat on corpus, x_hat on corpus_hat, codes), per chunk: the
    # best (scores [C, <=k], corpus rows [C, <=k]) over the blocks read so far.
    best: list[list] = [[None] * len(chunks) for _ in range(4)]
    block = N if corpus_block is None else corpus_block
    for start, piece in zip(range(0, N, block), row_chunks(corpus_ND, block), strict=True):
        x_BD = as_matrix(piece, model.d_in, what=f"corpus rows from {start}").to(device)
        x_hat_BD, codes = _reconstruct(model, x_BD, batch_size)
        index = InvertedIndex.from_codes(codes, device)
        _check_latents(query_codes, index)
        buf = _buffer(min(chunk, queries.shape[0]), x_BD.shape[0], x_BD)
        for c, rows in enumerate(chunks):
            for s, (q, corpus) in enumerate(
                ((queries, x_BD), (queries_hat, x_BD), (queries_hat, x_hat_BD))
            ):
                scores = buf[: q[rows].shape[0]]
                torch.matmul(q[rows], corpus.T, out=scores)
                best[s][c] = _merge(best[s][c], scores, start, k_search)
            scores = _sparse_scores(query_codes, rows, index, buf)
            best[3][c] = _merge(best[3][c], scores, start, k_search)
    truth, found, found_hat, found_codes = (torch.cat([b[1] for b in bs]) for bs in best)
    per_query = [
        recall_at_k(found, truth),
        ndcg_at_k(found, truth),
        recall_at_k(found_hat, truth),
        ndcg_at_k(found_hat, truth),
        recall_at_k(found_codes, truth),
    ]
    q = queries.shape[0]
    means = [v.mean().item() for v in per_query]
    return RetrievalFidelity(*means, q, Q, tuple(_stderr(v, Q) for v in per_query))


def _merge(best, scores_CB: torch.Tensor, start: int, k: int):
    """The best (scores, rows) of ``best`` and of a block whose columns are corpus rows
    ``start``.. : best first, ties to the lower row. ``best`` holds only rows below
    ``start``, each in that order, so among equal scores column order is row order and
    :func:`top_k_rows` keeps it."""
    cols = top_k_rows(scores_CB, min(k, scores_CB.shape[1]))
    vals, rows = scores_CB.gather(1, cols), cols + start
    if best is not None:
        vals, rows = torch.cat([best[0], vals], dim=1), torch.cat([best[1], rows], dim=1)
        cols = top_k_rows(vals, min(k, vals.shape[1]))
        vals, rows = vals.gather(1, cols), rows.gather(1, cols)
    return vals, rows


def _sample(Q: int, max_queries: int | None, seed: int) -> torch.Tensor | None:
    """Ascending query rows to measure: ``max_queries`` of Q drawn with ``seed``; None: all."""
    if max_queries is None or max_queries >= Q:
        return None
    if max_queries <= 0:
        raise ValueError(f"max_queries must be positive, got {max_queries}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(Q, generator=g)[:max_queries].sort().values


def _pick(x_QD, rows: torch.Tensor | None):
    """Rows ``rows`` of ``x_QD`` (all when None), read from disk if it is there."""
    x_QD = as_rows(x_QD)
    if rows is None:
        return x_QD[:] if isinstance(x_QD, MappedRows) else x_QD
    if isinstance(x_QD, MappedRows):
        return x_QD.take(rows)
    return x_QD[rows.numpy()] if isinstance(x_QD, np.ndarray) else x_QD[rows]


def _stderr(values_Q: torch.Tensor, total: int) -> float:
    """Standard error of the mean of ``values_Q``, a sample drawn without replacement
    from ``total`` values, as an estimate of their mean (finite population corrected)."""
    q = values_Q.numel()
    if q == total:
        return 0.0
    if q < 2:
        return math.nan
    return values_Q.std().item() / math.sqrt(q) * math.sqrt((total - q) / (total - 1))


def _reconstruct(model, x_ND: torch.Tensor, batch_size: int):
    """(x_hat [N, d] float32 on x's device, the codes) from one encode per batch."""
    x_hat = torch.empty_like(x_ND)
    values, indices = [], []
    for s in range(0, x_ND.shape[0], batch_size):
        v_BW, i_BW = model.encode(x_ND[s : s + batch_size])
        x_hat[s : s + batch_size] = model.decode(v_BW, i_BW).float()
        values.append(v_BW.float().cpu().numpy())
        indices.append(i_BW.to(torch.int32).cpu().numpy())
    return x_hat, SparseCodes(np.concatenate(values), np.concatenate(indices), model.n_latents)


# ------------------------------------------------------------------ checks
def _check_chunk(chunk: int) -> None:
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")


def _check_k(k: int, N: int) -> None:
    if k <= 0:
        raise ValueError(f"k_search must be positive, got {k}")
    if k > N:
        raise ValueError(f"k_search={k} exceeds the corpus size N={N}")


def _check_latents(query_codes: SparseCodes, index: InvertedIndex) -> None:
    n = index.offsets.numel() - 1
    if query_codes.n_latents != n:
        raise ValueError(f"query codes have {query_codes.n_latents} latents, the index {n}")


def _buffer(C: int, N: int, like: torch.Tensor) -> torch.Tensor:
    """The [C, N] float32 scores of one chunk; one per call, reused by every search in it
    (a fresh 1.2 GB per search costs its page faults each time)."""
    return torch.empty(C, N, dtype=torch.float32, device=like.device)


__all__ = [
    "RETRIEVAL_METRIC_NAMES",
    "InvertedIndex",
    "RetrievalFidelity",
    "fidelity_from_reconstructions",
    "ndcg_at_k",
    "recall_at_k",
    "retrieval_fidelity",
    "search",
    "sparse_search",
    "top_k_rows",
]
