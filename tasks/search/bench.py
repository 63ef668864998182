"""Steerable semantic search: index build time and memory, query latency, and whether an
approximate index would pay.

    python -m tasks.search.bench [--home PATH] [--domains cs.LG,astro-ph] [--cold 5]
                                 [--synthetic 300000] [--d 384] [--n-latents 12288] [--k 64]
                                 [--clusters 4096] [--queries 50] [--threads 2]
                                 [--approx ivf] [--embedder-queries 20]

Four sections, printed as they finish:

0. Cold start of the first of ``--domains`` (``--cold 0`` or ``--domains ''`` skips it):
   ``sae search QUERY --json`` in ``--cold`` new processes, searching in each and then
   through a running ``sae serve`` (:mod:`tasks.search.cold`): p50, min and max seconds.
1. Each of ``--domains`` in the home's newest finished sweep (``--home``, default
   ``$SAE_HOME``; ``--domains ''`` skips the section): the wall time of ``open_engine``
   split into the parts the engine records (``build_seconds``: the sweep's lookup in
   the store's index or MLflow, the papers, features.json, the model, the engine), the
   growth of the process's RSS, the corpus matrix's bytes; then ``--queries``
   distinct queries (a fixed list of research phrases, then titles of the corpus's papers
   spread through it). The first pays the embedder's load and is reported alone (cold);
   the p50/p95 of the rest are split into embed / encode / scan (matmul + top-k) / search
   with the embedding given, with the end-to-end ``search(query)`` and the same with one
   feature boosted (a feature the query lacks, at strength 2). With faiss, also the
   recall@10 of an IndexIVFFlat over these real papers, probing the share of the lists
   (1/64) that section 3's nprobe 16 of 1024 probes, and 4 times that.
2. A synthetic corpus of ``--synthetic`` x ``--d`` unit-norm float32 vectors (clustered in
   two levels, ``--clusters`` leaves, so that nearest neighbours are about as close as
   real papers'; 0: isotropic) with a random TopKSAE of ``--n-latents`` x ``--k``: index
   build time and memory, and the p50/p95 of encode + search (``search(x_D=...)``, one
   fixed random vector per query) unedited and edited. The embedder's latency is section
   1's, else MiniLM's timed here on ``--embedder-queries`` phrases (0: not timed).
3. If ``import faiss`` works, over the synthetic corpus: faiss ``IndexFlatIP`` (exact) and
   ``--approx`` (``ivf``: IndexIVFFlat, nlist 1024, nprobe 16, trained on a sample;
   ``hnsw``: IndexHNSWFlat, M 32, efSearch 64 -- its build takes many minutes at 300k on
   two cores, so it is not the default): build time, single-query p50/p95, recall@10
   against exact search, beside torch's exact matmul. Without faiss the section says so.

Torch runs ``--threads`` threads (the query embedder of section 1 uses its own count,
printed). At defaults the whole run takes 3 to 5 minutes on two cores (section 0 starts
a dozen processes, the IVF index trains for half a minute).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.search.engine import SearchEngine

TOP = 10
EDIT_STRENGTH = 2.0
NAME_WIDTH = 52

#: Queries typed by someone searching each domain; further queries are corpus titles.
PHRASES: dict[str, list[str]] = {
    "cs.LG": [
        "graph neural networks for molecular property prediction",
        "diffusion models for image generation",
        "sparse autoencoders interpretability of language models",
        "offline reinforcement learning with conservative value estimates",
        "federated learning under non-iid client data",
        "scaling laws for large language models",
        "contrastive self-supervised representation learning",
        "uncertainty quantification in deep neural networks",
        "adversarial robustness certified defenses",
        "time series forecasting with transformers",
        "mixture of experts routing efficiency",
        "low-rank adaptation fine-tuning",
        "causal inference from observational data",
        "bayesian optimization of hyperparameters",
        "neural operators for partial differential equations",
        "differential privacy in stochastic gradient descent",
        "in-context learning mechanisms",
        "knowledge distillation model compression",
        "reward modeling from human preferences",
        "out-of-distribution detection",
    ],
    "astro-ph": [
        "exoplanet atmospheres transmission spectroscopy",
        "fast radio bursts localisation",
        "gravitational waves from binary black hole mergers",
        "dark matter halo density profiles",
        "cosmic microwave background polarization",
        "type Ia supernova cosmology",
        "star formation in molecular clouds",
        "active galactic nuclei feedback",
        "galaxy cluster weak lensing masses",
        "stellar spectroscopy abundances of metal-poor stars",
        "protoplanetary disk substructures ALMA",
        "pulsar timing arrays nanohertz background",
        "high-redshift galaxies JWST",
        "tidal disruption events",
        "neutron star equation of state",
        "solar flares coronal mass ejections",
        "baryon acoustic oscillations galaxy surveys",
        "magnetohydrodynamic simulations of accretion disks",
        "asteroseismology of red giants",
        "machine learning photometric redshifts",
    ],
}


# ----------------------------------------------------------------- measuring
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "-"


def rss_mb() -> float:
    """The process's resident set now (Linux), else its peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable, *a, **k) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return time.perf_counter() - t0, out


def pcts(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in ms."""
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def row(name: str, *cells) -> str:
    out = []
    for c in cells:
        if isinstance(c, float):
            c = f"{c:.3f}" if abs(c) < 10 else f"{c:.1f}"
        out.append(f"  {c!s:>10}")
    return f"{name:<{NAME_WIDTH}}" + "".join(out)


def latency_table(title: str, rows: dict[str, list[float]]) -> list[str]:
    lines = [row(title, "p50", "p95")]
    lines += [row(name, *pcts(s)) for name, s in rows.items() if s]
    return lines


def emit(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def tensor_mb(*tensors: torch.Tensor) -> float:
    return sum(t.element_size() * t.numel() for t in tensors) / 2**20


def scan(corpus_ND: torch.Tensor, x_D: torch.Tensor):
    """The exact search alone: (scores, rows) of the top ``TOP``."""
    return torch.topk(corpus_ND @ x_D, TOP)


def _set_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ------------------------------------------------------------- section 1: home
def queries_for(domain: str, titles: list[str], n: int) -> list[str]:
    out = list(dict.fromkeys(PHRASES.get(domain, [])))[:n]
    seen = set(out)
    step = max(1, len(titles) // max(1, n))
    for i in range(0, len(titles), step):
        if len(out) >= n:
            break
        t = " ".join(titles[i].split())
        if t and t not in seen:
            out.append(t)
            seen.add(t)
    return out


def bench_home(domains: list[str], n_queries: int, threads: int) -> list[float]:
    """Section 1; gives back every warm embed time, for section 2's estimate."""
    t_import, _ = timed(__import__, "tasks.search.load")
    from tasks.search.limits import SearchInputError
    from tasks.search.load import open_engine

    emit(["", f"# 1. finished sweeps in {os.environ.get('SAE_HOME', '(default home)')}"])
    emit([row("imports (tasks.search.load: torch, polars...)", f"{t_import:.2f} s")])
    embeds: list[float] = []
    rng = np.random.default_rng(0)
    for domain in domains:
        rss0 = rss_mb()
        try:
            t_open, e = timed(open_engine, domain)
        except SearchInputError as exc:
            emit(["", f"## {domain}: skipped ({exc})"])
            continue
        assert isinstance(e, SearchEngine)
        _set_threads(threads)
        rss1 = rss_mb()
        n, d = e.corpus_ND.shape
        params = list(e.model.parameters())
        lines = [
            "",
            f"## {domain}: {n} papers x {d}, cell {e.cell} (n={e.n_latents}, k={e.model.k}), "
            f"sweep {e.sweep_id}, features.json {'yes' if e.document is not None else 'no'}",
            row("index build: open_engine", f"{t_open:.2f} s"),
        ]
        for part, s in e.build_seconds.items():
            lines.append(row(f"  {part}", f"{s:.2f} s"))
        qs = queries_for(domain, e.titles, n_queries)
        t_cold, _ = timed(e.search, qs[0])
        embed_threads = torch.get_num_threads()
        _set_threads(threads)
        rss2 = rss_mb()
        lines += [
            row("memory: RSS growth, open_engine", f"{rss1 - rss0:.1f} MB"),
            row("  + first query (loads the embedder)", f"{rss2 - rss1:.1f} MB"),
            row("  corpus matrix", f"{tensor_mb(e.corpus_ND):.1f} MB"),
            row("  SAE parameters", f"{tensor_mb(*params):.1f} MB"),
            row("cold first query (embedder load + search)", f"{t_cold * 1e3:.0f} ms"),
            row("embedder threads / torch threads", f"{embed_threads} / {threads}"),
        ]
        times: dict[str, list[float]] = {
            k: []
            for k in (
                "embed",
                "encode (SAE)",
                f"scan (matmul + top-{TOP})",
                "search, embedding given",
                "total: search(query)",
                "edited total (one feature boosted)",
            )
        }
        top1, top10, xs, exact = [], [], [], []
        for q in qs[1:]:
            t, x = timed(e.embed, q)
            times["embed"].append(t)
            xs.append(x)
            _set_threads(threads)
            times["encode (SAE)"].append(timed(e.code, x[None])[0])
            t, (v, i) = timed(scan, e.corpus_ND, x)
            times[f"scan (matmul + top-{TOP})"].append(t)
            exact.append(set(i.tolist()))
            top1.append(float(v[0]))
            top10.append(float(v[-1]))
            times["search, embedding given"].append(timed(e.search, q, x_D=x)[0])
            times["total: search(query)"].append(timed(e.search, q)[0])
            _set_threads(threads)
            edit = {int(rng.integers(e.n_latents)): EDIT_STRENGTH}
            times["edited total (one feature boosted)"].append(timed(e.search, q, edit)[0])
            _set_threads(threads)
        embeds += times["embed"]
        lines += latency_table(f"latency (ms), {len(qs) - 1} warm queries", times)
        if top1:
            lines.append(
                row(
                    "mean cosine of hit 1 / hit 10",
                    f"{np.mean(top1):.3f} / {np.mean(top10):.3f}",
                )
            )
        if xs:
            lines += ivf_recall(e.corpus_ND, torch.stack(xs), exact, threads)
        emit(lines)
        del e
    return embeds


def ivf_recall(
    corpus_ND: torch.Tensor, queries_QD: torch.Tensor, exact: list[set[int]], threads: int
) -> list[str]:
    """Recall@10 of faiss IVFFlat on a real corpus, probing about the share of it that
    nprobe 16 of nlist 1024 probes (1/64), and 4 times that: a check of section 3's
    recall, which is measured on synthetic clusters."""
    try:
        import faiss
    except ImportError:
        return [row("faiss IVFFlat recall@10 on these papers", "skipped (no faiss)")]
    faiss.omp_set_num_threads(threads)
    n, d = corpus_ND.shape
    nlist = max(1, min(1024, n // 39))
    xb = np.ascontiguousarray(corpus_ND.numpy(), dtype=np.float32)
    xq = np.ascontiguousarray(queries_QD.numpy(), dtype=np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    cells = []
    for nprobe in dict.fromkeys((max(1, round(nlist / 64)), min(nlist, 4 * round(nlist / 64)))):
        index.nprobe = nprobe
        _, found = index.search(xq, TOP)
        recall = np.mean(
            [len(ex & set(f.tolist())) / TOP for ex, f in zip(exact, found, strict=True)]
        )
        cells.append(f"{recall:.3f} at {nprobe}")
    return [row(f"faiss IVFFlat nlist={nlist} recall@10, nprobe", " / ".join(cells))]


# -------------------------------------------------------- section 2: synthetic
def synthetic_vectors(
    n: int, d: int, clusters: int, gen: torch.Generator, centres: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[n, d] unit-norm float32: around ``clusters`` leaf centres, themselves around
    ``clusters // 64`` topics (0: isotropic). Gives back the centres, to draw queries from
    the same clusters."""

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def noise(m: int) -> torch.Tensor:
        return unit(torch.randn(m, d, generator=gen))

    if clusters <= 0:
        return noise(n), None
    if centres is None:
        topics = noise(max(1, clusters // 64))
        pick = torch.randint(len(topics), (clusters,), generator=gen)
        centres = unit(topics[pick] + noise(clusters))
    out = torch.empty(n, d)
    for s in range(0, n, 65536):
        m = min(n, s + 65536) - s
        pick = torch.randint(len(centres), (m,), generator=gen)
        out[s : s + m] = unit(centres[pick] + noise(m))
    return out, centres


def _no_embedder(texts: list[str]) -> np.ndarray:
    raise RuntimeError("the synthetic engine has no embedder: pass x_D")


def time_minilm(n: int, threads: int) -> tuple[float, list[float]]:
    """(load + first embed, warm embeds) of MiniLM on CPU, one phrase at a time."""
    from tasks.embed.embedders import make_embedder

    phrases = [p for ps in PHRASES.values() for p in ps]
    t0 = time.perf_counter()
    emb = make_embedder("minilm", device="cpu", threads=threads)
    emb.embed([phrases[0]])
    cold = time.perf_counter() - t0
    warm = [timed(emb.embed, [phrases[(i + 1) % len(phrases)]])[0] for i in range(n)]
    return cold, warm


@dataclass
class Synthetic:
    corpus: torch.Tensor
    queries: torch.Tensor  # [Q, d]
    exact: list[set[int]]  # each query's exact top-TOP rows


def bench_synthetic(a: argparse.Namespace, embeds: list[float]) -> Synthetic:
    from sae.config import SAEConfig
    from sae.model import TopKSAE

    gen = torch.Generator().manual_seed(0)
    rss0 = rss_mb()
    t_gen, (corpus, centres) = timed(synthetic_vectors, a.synthetic, a.d, a.clusters, gen)
    queries, _ = synthetic_vectors(a.queries + 1, a.d, a.clusters, gen, centres)
    rss1 = rss_mb()
    cfg = SAEConfig(d_in=a.d, n_latents=a.n_latents, k=a.k)
    t_model, model = timed(TopKSAE, cfg, generator=torch.Generator().manual_seed(1))
    ids = [str(i) for i in range(a.synthetic)]
    t_engine, e = timed(
        SearchEngine, model, ids, ids, corpus, _no_embedder, None, "synthetic", "synthetic"
    )
    rss2 = rss_mb()
    shape = f"{a.clusters} clusters" if a.clusters > 0 else "isotropic"
    lines = [
        "",
        f"# 2. synthetic: {a.synthetic} x {a.d} unit-norm float32 ({shape}), random TopKSAE "
        f"n={a.n_latents} k={a.k}, no features.json",
        row("corpus generation (not part of the index)", f"{t_gen:.2f} s"),
        row("index build: SAE init", f"{t_model:.2f} s"),
        row("  engine init (feature units on 4096 rows)", f"{t_engine:.2f} s"),
        row("memory: RSS growth, corpus", f"{rss1 - rss0:.1f} MB"),
        row("  + SAE and engine", f"{rss2 - rss1:.1f} MB"),
        row("  corpus matrix", f"{tensor_mb(e.corpus_ND):.1f} MB"),
        row("  SAE parameters", f"{tensor_mb(*model.parameters()):.1f} MB"),
    ]
    rng = np.random.default_rng(1)
    e.search("q", x_D=queries[0])  # warm-up, not counted
    times: dict[str, list[float]] = {
        "encode (SAE)": [],
        f"scan (matmul + top-{TOP})": [],
        "encode + search: search(x_D=...)": [],
        "edited encode + search (one boosted)": [],
    }
    exact, top1, top10 = [], [], []
    for x in queries[1:]:
        times["encode (SAE)"].append(timed(e.code, x[None])[0])
        t, (v, i) = timed(scan, e.corpus_ND, x)
        times[f"scan (matmul + top-{TOP})"].append(t)
        exact.append(set(i.tolist()))
        top1.append(float(v[0]))
        top10.append(float(v[-1]))
        times["encode + search: search(x_D=...)"].append(timed(e.search, "q", x_D=x)[0])
        edit = {int(rng.integers(a.n_latents)): EDIT_STRENGTH}
        times["edited encode + search (one boosted)"].append(timed(e.search, "q", edit, x_D=x)[0])
    lines += latency_table(f"latency (ms), {a.queries} queries", times)
    lines.append(
        row("mean cosine of hit 1 / hit 10", f"{np.mean(top1):.3f} / {np.mean(top10):.3f}")
    )
    source = "section 1"
    if not embeds and a.embedder_queries > 0:
        cold, embeds = time_minilm(a.embedder_queries, a.threads)
        _set_threads(a.threads)
        source = f"MiniLM here, {a.embedder_queries} queries"
        lines.append(row("MiniLM load + first embed", f"{cold * 1e3:.0f} ms"))
    if embeds:
        e50, e95 = pcts(embeds)
        s50, s95 = pcts(times["encode + search: search(x_D=...)"])
        lines += [
            row(f"embed ({source})", e50, e95),
            row("estimated total (embed + encode + search)", e50 + s50, e95 + s95),
        ]
    emit(lines)
    return Synthetic(corpus, queries[1:], exact)


# ------------------------------------------------------------ section 3: faiss
def bench_faiss(s: Synthetic, approx: list[str], threads: int) -> None:
    try:
        import faiss
    except ImportError:
        emit(["", "# 3. approximate index: skipped (faiss is not importable)"])
        return
    faiss.omp_set_num_threads(threads)
    n, d = s.corpus.shape
    xb = np.ascontiguousarray(s.corpus.numpy(), dtype=np.float32)
    qs = [np.ascontiguousarray(q[None].numpy(), dtype=np.float32) for q in s.queries]
    lines = [
        "",
        f"# 3. approximate index? faiss {faiss.__version__}, {n} x {d}, "
        f"{len(qs)} single queries, top {TOP}, recall against torch's exact top {TOP}",
        row("index", "build (s)", "p50 (ms)", "p95 (ms)", "recall@10", "RSS (MB)"),
    ]

    torch_times = []
    for q in s.queries:
        torch_times.append(timed(scan, s.corpus, q)[0])
    lines.append(row("torch exact matmul + topk", "-", *pcts(torch_times), 1.0, "0"))

    def measure(name: str, build: Callable[[], object]) -> None:
        rss0 = rss_mb()
        t_build, index = timed(build)
        grown = rss_mb() - rss0
        times, hits = [], []
        for q, exact in zip(qs, s.exact, strict=True):
            t, (_, found) = timed(index.search, q, TOP)
            times.append(t)
            hits.append(len(exact & set(found[0].tolist())) / TOP)
        lines.append(row(name, t_build, *pcts(times), float(np.mean(hits)), f"{grown:.0f}"))
        emit(lines)  # as each finishes: a build can take a while
        lines.clear()

    def flat():
        index = faiss.IndexFlatIP(d)
        index.add(xb)
        return index

    measure("faiss IndexFlatIP (exact)", flat)
    if "ivf" in approx:
        nlist = max(1, min(1024, n // 39))
        nprobe = min(16, nlist)
        n_train = min(n, 40 * nlist)
        train = xb[np.random.default_rng(2).choice(n, n_train, replace=False)]

        def ivf():
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10
            index.train(train)
            index.add(xb)
            index.nprobe = nprobe
            return index

        measure(f"faiss IVFFlat nlist={nlist} nprobe={nprobe} ({n_train} train)", ivf)
        lines.append(
            "(synthetic clusters flatter an approximate index's recall and isotropic vectors "
            "(--clusters 0) understate it; section 1 measures it on real papers)"
        )
    if "hnsw" in approx:

        def hnsw():
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.add(xb)
            index.hnsw.efSearch = 64
            return index

        measure("faiss HNSWFlat M=32 efSearch=64", hnsw)
    else:
        lines.append(row("faiss HNSWFlat", "not run (--approx hnsw)"))
    emit(lines)


# --------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--home", type=Path, default=None, help="SAE_HOME (default: $SAE_HOME)")
    p.add_argument("--domains", default="cs.LG,astro-ph", help="'' skips sections 0 and 1")
    p.add_argument("--cold", type=int, default=5, help="new processes per cold figure (0: skip)")
    p.add_argument("--synthetic", type=int, default=300_000, help="synthetic papers (0: skip)")
    p.add_argument("--d", type=int, default=384, help="synthetic embedding dimension")
    p.add_argument("--n-latents", type=int, default=12288, help="synthetic SAE latents")
    p.add_argument("--k", type=int, default=64, help="synthetic SAE k")
    p.add_argument("--clusters", type=int, default=4096, help="synthetic leaves (0: isotropic)")
    p.add_argument("--queries", type=int, default=50, help="queries per corpus")
    p.add_argument("--threads", type=int, default=2, help="torch (and faiss) threads")
    p.add_argument("--approx", default="ivf", help="faiss approximate indexes: ivf, hnsw")
    p.add_argument(
        "--embedder-queries", type=int, default=20, help="MiniLM timing without section 1"
    )
    a = p.parse_args(argv)
    if a.queries < 2 or a.threads < 1 or a.synthetic < 0 or a.cold < 0:
        p.error("--queries must be >= 2, --threads >= 1, --synthetic and --cold >= 0")
    if a.synthetic and a.synthetic < TOP:
        p.error(f"--synthetic must be 0 or >= {TOP}")
    if a.home is not None:
        os.environ["SAE_HOME"] = str(a.home)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    emit(
        [
            f"cpu: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        ]
    )
    domains = [d.strip() for d in a.domains.split(",") if d.strip()]
    if domains and a.cold:
        from tasks.search.cold import bench_cold

        query = PHRASES.get(domains[0], PHRASES["cs.LG"])[0]
        emit(bench_cold(domains[0], query, a.cold, row))
    embeds = bench_home(domains, a.queries, a.threads) if domains else []
    if a.synthetic:
        s = bench_synthetic(a, embeds)
        bench_faiss(s, [x.strip() for x in a.approx.split(",")], a.threads)
    emit(["", f"bench wall time {time.perf_counter() - t0:.0f} s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
