"""Which approximate index search should use, measured: build time, the index's memory,
recall@10 against exact search and single-query p50/p95 latency, on ``--threads`` cores.

    python -m tasks.search.ann_bench [--n 300000] [--d 384] [--clusters 0] [--queries 200]
        [--threads 2] [--methods exact,ann,ivf-flat,hnsw-sq8,hnswlib,usearch]
        [--shares 1/512,1/128,1/32] [--efs 32,64,128,256]
        [--store ROOT --embedder minilm-l6-v2]

The corpus: ``--n`` x ``--d`` unit-norm float32 vectors around ``--clusters`` leaf centres
(default sqrt(n)) grouped in topics (:func:`tasks.search.bench.synthetic_vectors`);
the queries: draws from the same clusters, every other one moved by half a random unit
direction as a steering edit moves it. ``--store ROOT`` takes instead the real papers a
store holds embedded by ``--embedder`` (``--queries`` of them, spread through it, are
the queries and left out of the corpus). Methods (RSS: the process's growth in the build):

- ``exact``: the engine's torch matmul + top-k (:func:`tasks.search.ann.exact_search`).
- ``ann``: :mod:`tasks.search.ann` as the engine builds it (faiss IVF over 8-bit codes,
  rescored exactly), at its own probes (marked) and each share of its cells in
  ``--shares``; its file's size and save/load seconds through a local store; then
  through a :class:`SearchEngine` with a random TopKSAE, one feature boosted (the
  steered query's whole search: encode, edit, index, the hits' codes), beside the exact
  engine.
- ``ivf-flat``: faiss IVF over the float vectors (a second copy), the same cells.
- ``hnsw-sq8``: faiss HNSW (M 16, efConstruction 40) over the same codes, rescored, at
  each search effort in ``--efs``.
- ``hnswlib`` (M 16, ef_construction 100, ef 64/128) and ``usearch`` (connectivity 16,
  expansion 128, ef 64/128, f32): graph indexes holding a float copy.

Builds use all ``--threads``; queries are searched one at a time. Serialize big runs:
``flock /tmp/heavy.lock python -m tasks.search.ann_bench --n 2700000``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction

import faiss
import numpy as np
import torch

from infra.store import Store
from tasks.search import ann
from tasks.search.bench import TOP, cpu_model, pcts, row, rss_mb, synthetic_vectors, timed
from tasks.search.engine import SearchEngine

EDIT_STRENGTH = 2.0


def emit(*lines: str) -> None:
    print("\n".join(lines), flush=True)


def recall(found_QT: np.ndarray, exact_QT: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / TOP for f, e in zip(found_QT, exact_QT)]))  # noqa: B905


def single_queries(search: Callable, q_QD: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Per-query seconds and the rows found, one query at a time (as a page asks)."""
    times, found = [], []
    for q in q_QD:
        t, rows = timed(search, q[None])
        times.append(t)
        found.append(np.asarray(rows).reshape(-1)[:TOP])
    return times, np.stack(found)


def report(name: str, build_s, mem_mb, times: list[float], r: float) -> None:
    emit(row(name, build_s, f"{mem_mb:.0f}", *pcts(times), r))


def bench_exact(x: torch.Tensor, q: np.ndarray) -> np.ndarray:
    times, found = single_queries(lambda b: ann.exact_search(x, b, TOP)[1], q)
    report("exact (torch matmul + top-k)", "-", 0, times, 1.0)
    return found


def bench_ann(
    x: torch.Tensor, q: np.ndarray, exact: np.ndarray, shares: list[Fraction]
) -> ann.AnnIndex:
    """The module's index: build, its file's size and save/load time through a local
    store, then recall and latency at its own probes and at each share of its cells."""
    rss0 = rss_mb()
    t, index = timed(ann.build, x, "bench")
    mem = rss_mb() - rss0
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        t_save = timed(index.save, store, "bench.ann")[0]
        size = store.fs.size(store._path("bench.ann")) / 2**20
        t_load = timed(ann.AnnIndex.load, store, "bench.ann", x, "bench")[0]
    own, nlist = index.index.nprobe, index.index.nlist
    for nprobe in sorted({own} | {max(1, math.ceil(nlist * share)) for share in shares}):
        index.index.nprobe = nprobe
        times, found = single_queries(lambda b: index.search(b, TOP)[1], q)
        mark = " (ann.py)" if nprobe == own else ""
        report(f"ivf-sq8 nlist={nlist} nprobe={nprobe}, rescored{mark}", t, mem, times,
               recall(found, exact))  # fmt: skip
    index.index.nprobe = own
    emit(row("  its file; save / load (s)", f"{size:.0f} MB", f"{t_save:.1f}", f"{t_load:.1f}"))
    return index


def bench_hnsw_sq8(x: torch.Tensor, q: np.ndarray, exact: np.ndarray, efs: list[int]) -> None:
    """faiss HNSW (M 16, efConstruction 40) over the same 8-bit codes, rescored alike."""
    n, d = x.shape
    rss0 = rss_mb()

    def build():
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        index.train(x[: 40 * ann.n_cells(n)].numpy())
        for s in range(0, n, ann.ADD_CHUNK):
            index.add(x[s : s + ann.ADD_CHUNK].numpy())
        return index

    t, index = timed(build)
    mem = rss_mb() - rss0
    for ef in efs:
        index.hnsw.efSearch = ef
        times, found = single_queries(rescored(index, x), q)
        report(f"hnsw-sq8 M=16 efC=40 ef={ef}, rescored", t, mem, times, recall(found, exact))


def rescored(index, x: torch.Tensor) -> Callable[[np.ndarray], np.ndarray]:
    """One query's rows by ``index``'s best RERANK * TOP rescored exactly."""
    xn = x.numpy()

    def search(b: np.ndarray) -> np.ndarray:
        cand = ann.faiss_search(index, b, ann.RERANK * TOP)[1][0]
        cand = cand[cand >= 0]
        return cand[np.argsort(-(xn[cand] @ b[0]), kind="stable")]

    return search


def bench_engine(x: torch.Tensor, q: np.ndarray, index: ann.AnnIndex) -> None:
    """A steered search through the engine: encode, boost one feature, search, explain."""
    from sae.config import SAEConfig
    from sae.model import TopKSAE

    d = x.shape[1]
    model = TopKSAE(SAEConfig(d_in=d, n_latents=8 * d, k=32), generator=torch.Generator())
    ids = [str(i) for i in range(x.shape[0])]
    boosted = np.random.default_rng(3).integers(0, 8 * d, len(q))
    exact_hits = None
    for name, idx in (("exact", None), ("ann.py", index)):
        eng = SearchEngine(model, ids, ids, x, _no_embed, None, "bench", "bench", index=idx)
        times, hits = [], []
        for qd, feat in zip(q, boosted, strict=True):
            t, res = timed(eng.search, "q", {int(feat): EDIT_STRENGTH}, x_D=torch.from_numpy(qd))
            times.append(t)
            hits.append([h.row for h in res.hits])
        exact_hits = np.array(hits) if exact_hits is None else exact_hits
        r = recall(np.array(hits), exact_hits)
        emit(row(f"SearchEngine.search, one feature boosted ({name})", "-", "-", *pcts(times), r))


def bench_ivf_flat(x: torch.Tensor, q: np.ndarray, exact: np.ndarray, shares: list[Fraction]):
    """faiss IVF over the float vectors (a second copy), the module's cells and training."""
    n, d = x.shape
    nlist = ann.n_cells(n)
    rss0 = rss_mb()

    def build():
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = ann.TRAIN_ITERS
        sample = np.random.default_rng(0).choice(n, min(n, ann.TRAIN_PER_CELL * nlist), False)
        index.train(x[torch.from_numpy(np.sort(sample))].numpy())
        for s in range(0, n, ann.ADD_CHUNK):
            index.add(x[s : s + ann.ADD_CHUNK].numpy())
        return index

    t, index = timed(build)
    mem = rss_mb() - rss0
    for share in shares:
        index.nprobe = max(1, math.ceil(nlist * share))
        times, found = single_queries(lambda b: ann.faiss_search(index, b, TOP)[1], q)
        report(f"ivf-flat nlist={nlist} nprobe={index.nprobe}", t, mem, times,
               recall(found, exact))  # fmt: skip


def bench_hnswlib(x: torch.Tensor, q: np.ndarray, exact: np.ndarray, threads: int) -> None:
    import hnswlib

    n, d = x.shape
    rss0 = rss_mb()

    def build():
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, M=16, ef_construction=100, random_seed=0)
        index.set_num_threads(threads)
        for s in range(0, n, ann.ADD_CHUNK):
            keys = np.arange(s, min(n, s + ann.ADD_CHUNK))
            index.add_items(x[s : s + ann.ADD_CHUNK].numpy(), keys)
        return index

    t, index = timed(build)
    mem = rss_mb() - rss0
    index.set_num_threads(1)
    for ef in (64, 128):
        index.set_ef(ef)
        times, found = single_queries(lambda b: index.knn_query(b, TOP)[0], q)
        report(f"hnswlib M=16 efC=100 ef={ef}", t, mem, times, recall(found, exact))


def bench_usearch(x: torch.Tensor, q: np.ndarray, exact: np.ndarray, threads: int) -> None:
    from usearch.index import Index

    n, d = x.shape
    rss0 = rss_mb()

    def build():
        index = Index(ndim=d, metric="ip", dtype="f32", connectivity=16, expansion_add=128)
        for s in range(0, n, ann.ADD_CHUNK):
            keys = np.arange(s, min(n, s + ann.ADD_CHUNK))
            index.add(keys, x[s : s + ann.ADD_CHUNK].numpy(), threads=threads)
        return index

    t, index = timed(build)
    mem = rss_mb() - rss0
    for ef in (64, 128):
        index.expansion_search = ef
        times, found = single_queries(lambda b: index.search(b, TOP).keys, q)
        report(f"usearch conn=16 expC=128 ef={ef}", t, mem, times, recall(found, exact))


def _no_embed(texts: list[str]) -> np.ndarray:
    raise RuntimeError("the bench passes x_D")


def synthetic(n: int, d: int, clusters: int, n_q: int) -> tuple[torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    x, centres = synthetic_vectors(n, d, clusters or round(math.sqrt(n)), gen)
    q, _ = synthetic_vectors(n_q, d, 1, gen, centres)
    move = torch.randn(n_q, d, generator=gen)
    q[1::2] += 0.5 * (move / move.norm(dim=1, keepdim=True))[1::2]
    return x, (q / q.norm(dim=1, keepdim=True)).numpy()


def real_vectors(root: str, embedder: str, n_q: int) -> tuple[torch.Tensor, np.ndarray]:
    """The papers embedded in a store's ``embedder`` namespace: ``n_q`` of them spread
    through it as the queries, the rest as the corpus."""
    from infra.store import Store
    from tasks.embed.manifest import Namespace

    _, v = Namespace(Store(root), embedder).load()
    if len(v) <= n_q:
        raise SystemExit(f"{root} holds {len(v)} vectors of {embedder}: too few for {n_q} queries")
    is_q = np.zeros(len(v), dtype=bool)
    is_q[np.linspace(0, len(v) - 1, n_q).astype(int)] = True
    return torch.from_numpy(np.ascontiguousarray(v[~is_q])), np.ascontiguousarray(v[is_q])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=300_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--clusters", type=int, default=0, help="0: sqrt(n)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="exact,ann")
    p.add_argument("--shares", default="1/512,1/128,1/32", help="IVF: shares of cells probed")
    p.add_argument("--efs", default="32,64,128,256", help="hnsw-sq8: search efforts")
    p.add_argument("--store", default="", help="a store root whose real vectors to use instead")
    p.add_argument("--embedder", default="minilm-l6-v2")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    methods = a.methods.split(",")
    shares = [Fraction(s) for s in a.shares.split(",")]
    efs = [int(e) for e in a.efs.split(",")]
    t0 = time.perf_counter()
    if a.store:
        x, q = real_vectors(a.store, a.embedder, a.queries)
        what = f"{len(x)} papers of {a.store} ({a.embedder}), {a.queries} others as queries"
    else:
        x, q = synthetic(a.n, a.d, a.clusters, a.queries)
        what = f"synthetic {a.n} x {a.d}, {a.clusters or round(math.sqrt(a.n))} clusters"
    emit(
        f"# {what}; {a.threads} threads on {cpu_model()}; corpus ready in "
        f"{time.perf_counter() - t0:.0f} s; top {TOP}, single queries",
        row("method", "build (s)", "RSS (MB)", "p50 (ms)", "p95 (ms)", "recall@10"),
    )
    exact = bench_exact(x, q)
    if "ann" in methods:
        index = bench_ann(x, q, exact, shares)
        bench_engine(x, q, index)
        del index
    if "ivf-flat" in methods:
        bench_ivf_flat(x, q, exact, shares)
    if "hnsw-sq8" in methods:
        bench_hnsw_sq8(x, q, exact, efs)
    if "hnswlib" in methods:
        bench_hnswlib(x, q, exact, a.threads)
    if "usearch" in methods:
        bench_usearch(x, q, exact, a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
