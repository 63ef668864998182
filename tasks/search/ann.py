"""An approximate nearest-neighbour index over a corpus of unit-norm embeddings [N, d], so
that a search at millions of papers reads a sliver of the corpus, not all of it (an exact
scan reads N x d x 4 bytes per query: 4 GB at 2.7M x 384).

The index is faiss's IVF over 8-bit scalar-quantized codes, inner product
(``IndexIVFScalarQuantizer``): the corpus cut into ``nlist`` k-means cells, each holding
its papers' codes at one byte a dimension (a quarter of the matrix), and a query scans
only the ``nprobe`` cells nearest it. Their best ``RERANK * top`` are then rescored
exactly against the corpus matrix (the engine holds it anyway, to explain its hits), so
the scores are exact cosines and the codes' rounding never reorders a result.

Chosen by ``python -m tasks.search.ann_bench`` (2 threads): at 2.7M x 384 (synthetic
clusters) it built in 6-7 min into 1.0 GB and found all of the exact top 10 at 13 of
6573 cells (p95 under 1.3 ms). faiss HNSW over the same codes built in 6 min but found only
0.29 of them there (its graph strands clustered data); hnswlib and usearch hold a float
copy of the corpus (4 GB more) and built 4x and 20x slower than IVF at 100k. Real
MiniLM vectors need more cells probed than synthetic clusters (a quarter of 67 cells for
0.98 at 2.7k papers), hence the probes' growth with the cells (:data:`PROBES_PER_ROOT`).

What the engine (:mod:`tasks.search.load`) and the scale rehearsal call:

    index = build(x_ND, fingerprint)          # x_ND [N, d] float32 unit-norm, added in pieces
    scores_BT, rows_BT = index.search(q_BD, top)   # [B, top] cosines (float32) and rows
                                                   # (int64), best first
    index.save(store, rel)                    # one file, written atomically
    index = AnnIndex.load(store, rel, x_ND, fingerprint)  # None: absent or not this corpus
    index = open_index(store, rel, x_ND, fingerprint)     # load, else build and save
    scores_BT, rows_BT = exact_search(x_ND, q_BD, top)    # the same by a full scan

``fingerprint(snapshot_id, ids)`` names the corpus an index was built from (its rows'
order included); an index whose fingerprint, recipe or shape differs is never used.
Below :data:`EXACT_BELOW` papers the exact scan is fast enough and no index is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import numpy as np
import torch

from infra.store import Store, StoreError

log = logging.getLogger(__name__)

#: Corpora smaller than this are searched exactly: a scan of 100k x 384 takes ~20 ms
#: (p95) on two cores, and past that the 50 ms a steered search may take (ann_bench).
EXACT_BELOW = 100_000
#: Cells per square root of the corpus's size (faiss's guidance: 4 to 16 x sqrt(N)).
CELLS_PER_ROOT = 4
#: Cells probed per square root of the cells: 17 of 67 at 2.7k real papers (recall@10
#: 0.98), 163 of 6573 at 2.7M synthetic ones (1.0; ~5 ms p95).
PROBES_PER_ROOT = 2
#: Candidates rescored exactly per result wanted.
RERANK = 4
#: k-means training rows per cell, and its iterations.
TRAIN_PER_CELL, TRAIN_ITERS = 40, 10
#: Batches smaller than this are searched on the calling thread alone (see :func:`faiss_search`).
SERIAL_BELOW = 8
#: Rows added to the index at a time: the only float copy the build makes beyond a sample.
ADD_CHUNK = 65_536
#: Changes whenever the build's parameters or format do: an index of another recipe is rebuilt.
RECIPE = f"ivf-sq8/c{CELLS_PER_ROOT}/t{TRAIN_PER_CELL}x{TRAIN_ITERS}/v1"
_MAGIC = b"arxiv-sae-ann\n"


class AnnIndexError(ValueError):
    """Bad input to the index: the message names the problem."""


def fingerprint(snapshot_id: str, ids: list[str]) -> str:
    """The snapshot's id and a hash of its ids in row order."""
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return f"{snapshot_id}:{len(ids)}:{digest}"


def index_path(snapshot_path: str) -> str:
    """Where a snapshot's index lives: beside it, named by its id."""
    return f"{snapshot_path.removesuffix('.parquet')}.ann"


def n_cells(n: int) -> int:
    return max(1, min(n // TRAIN_PER_CELL, round(CELLS_PER_ROOT * math.sqrt(n))))


def n_probes(nlist: int) -> int:
    return min(nlist, math.ceil(PROBES_PER_ROOT * math.sqrt(nlist)))


class AnnIndex:
    """The faiss index of ``x_ND`` (which it rescores against, and does not copy)."""

    def __init__(self, index, x_ND: torch.Tensor, fingerprint: str):
        self.index, self.x_ND, self.fingerprint = index, x_ND, fingerprint
        self.index.nprobe = n_probes(index.nlist)

    @torch.no_grad()
    def search(self, q_BD, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, top] float32, rows [B, top] int64), best first, for queries
        ``q_BD`` ([B, d] or [d], torch or numpy, float32)."""
        q = _queries(q_BD, self.x_ND.shape[1])
        _check_top(top, self.x_ND.shape[0])
        _, cand_BC = faiss_search(self.index, q.numpy(), min(RERANK * top, self.x_ND.shape[0]))
        valid = cand_BC >= 0  # the cells probed can hold fewer candidates than asked
        rows_BC = np.where(valid, cand_BC, 0)
        # numpy, one thread: a torch op this small still wakes its thread team, which
        # waits for a core whenever another process holds one (~20 ms on two cores).
        exact_BC = np.einsum("bcd,bd->bc", self.x_ND.numpy()[rows_BC], q.numpy())
        exact_BC = np.where(valid, exact_BC, -np.inf)
        pos = np.argsort(-exact_BC, axis=1, kind="stable")[:, :top]
        scores = torch.from_numpy(np.take_along_axis(exact_BC, pos, 1).astype(np.float32))
        found = torch.from_numpy(np.take_along_axis(rows_BC, pos, 1).astype(np.int64))
        short = torch.from_numpy(valid.sum(1) < top)
        if short.any():  # too few candidates: those queries are scanned exactly
            scores[short], found[short] = exact_search(self.x_ND, q[short], top)
        return scores, found

    def save(self, store: Store, rel: str) -> str:
        """Writes the index and what it was built from as one file at ``rel``."""
        meta = {"fingerprint": self.fingerprint, "recipe": RECIPE, "shape": list(self.x_ND.shape)}
        import faiss  # here, not at the top: a cold search of a small corpus never needs it

        payload = faiss.serialize_index(self.index)
        header = _MAGIC + json.dumps(meta).encode() + b"\n"
        return store.write_bytes(rel, b"".join((header, memoryview(payload))))  # one copy

    @classmethod
    def load(cls, store: Store, rel: str, x_ND: torch.Tensor, fingerprint: str) -> AnnIndex | None:
        """The index at ``rel`` if it was built from this corpus by this recipe; None if
        there is none, or it was built from another (it is then to be rebuilt)."""
        try:
            data = store.read_bytes(rel)
        except FileNotFoundError:
            return None
        meta, payload = _split(data)
        want = {"fingerprint": fingerprint, "recipe": RECIPE, "shape": list(x_ND.shape)}
        if meta != want:
            log.warning("%s is not an index of this corpus (%s, not %s)", rel, meta, want)
            return None
        import faiss

        try:
            index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except RuntimeError as exc:  # faiss's own check of its bytes
            log.warning("%s is not a readable index (%s)", rel, exc)
            return None
        return cls(index, x_ND, fingerprint)


def build(x_ND, fingerprint: str = "", seed: int = 0) -> AnnIndex:
    """The index of ``x_ND`` ([N, d] float32 unit-norm, torch or numpy), trained on a
    sample of it and filled :data:`ADD_CHUNK` rows at a time."""
    import faiss

    x = torch.as_tensor(x_ND)
    if x.ndim != 2 or x.dtype != torch.float32 or x.shape[0] == 0:
        raise AnnIndexError(f"the corpus must be a non-empty [N, d] float32 matrix, not "
                            f"{x.dtype} {tuple(x.shape)}")  # fmt: skip
    n, d = x.shape
    nlist = n_cells(n)
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.niter, index.cp.seed = TRAIN_ITERS, seed
    n_train = min(n, TRAIN_PER_CELL * nlist)
    sample = np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
    index.train(np.ascontiguousarray(x[torch.from_numpy(sample)].numpy()))
    for s in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(x[s : s + ADD_CHUNK].numpy()))
    return AnnIndex(index, x, fingerprint)


def open_index(store: Store, rel: str, x_ND, fingerprint: str) -> AnnIndex:
    """The index of ``x_ND`` stored at ``rel``, else one built now and saved there (a
    store that cannot be written keeps the index in memory only)."""
    x = torch.as_tensor(x_ND)
    index = AnnIndex.load(store, rel, x, fingerprint)
    if index is not None:
        return index
    index = build(x, fingerprint)
    try:
        index.save(store, rel)
    except StoreError as exc:  # a read-only store: built again by the next process
        log.warning("search index not saved (%s)", exc)
    return index


@torch.no_grad()
def exact_search(x_ND, q_BD, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, top], rows [B, top]) of a full scan of ``x_ND``."""
    x = torch.as_tensor(x_ND)
    q = _queries(q_BD, x.shape[1])
    _check_top(top, x.shape[0])
    scores, rows = torch.topk(q @ x.T, top, dim=1)
    return scores, rows


def faiss_search(index, q_BD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss's search, on this thread alone for fewer than :data:`SERIAL_BELOW` queries:
    faiss shares queries among its OpenMP threads, and a team woken for one query waits
    for a core whenever another process holds one (~15 ms on two busy cores, not 0.5 ms)."""
    import faiss

    if len(q_BD) >= SERIAL_BELOW:
        return index.search(q_BD, k)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # this thread's setting only (an OpenMP ICV)
    try:
        return index.search(q_BD, k)
    finally:
        faiss.omp_set_num_threads(threads)


def _queries(q_BD, d: int) -> torch.Tensor:
    q = torch.as_tensor(q_BD, dtype=torch.float32)
    q = q[None] if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != d:
        raise AnnIndexError(f"queries must be [B, {d}] or [{d}], not {tuple(q.shape)}")
    return q.contiguous()


def _check_top(top: int, n: int) -> None:
    if not isinstance(top, int) or not 1 <= top <= n:
        raise AnnIndexError(f"top must be 1 to {n} (the corpus's size), got {top!r}")


def _split(data: bytes) -> tuple[dict, memoryview]:
    """(metadata, faiss bytes); metadata {} for a file this module did not write."""
    end = data.find(b"\n", len(_MAGIC))
    if not data.startswith(_MAGIC) or end < 0:
        return {}, memoryview(b"")
    try:
        meta = json.loads(data[len(_MAGIC) : end])
    except ValueError:
        meta = {}
    return meta, memoryview(data)[end + 1 :]
