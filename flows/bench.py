"""What orchestration costs: a 4-cell sweep through Prefect, Ray and MLflow vs the same
training called directly, and a rerun of the finished sweep.

    python -m flows.bench [--papers 2000] [--epochs 10] [--data ../shared/data/arxiv]

The papers are ingested and embedded once, up front, into a template store (not
timed); each timed run gets a fresh SAE_HOME with a copy of it, so it starts its own
Prefect server, Ray and MLflow database as a first run on a new machine would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

from infra.code_version import code_version
from infra.settings import Settings, get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.corpus.ingest import ingest_source
from tasks.embed.embedders import embedder_name
from tasks.embed.run import embed_domain
from tasks.embed.snapshot import fix_snapshot
from tasks.sweep.config import GridParams
from tasks.sweep.train import sweep_pack, train_pack

K, N = "16,32", "3072,4608"


def _prepare(base: Path, data: Path, papers: int) -> Path:
    store = Store(str(base / "template"))
    cs = get_domain("cs.LG")
    ingest_source(store, cs, data / "cs_lg.jsonl.gz")
    t0 = time.perf_counter()
    report = embed_domain(
        store, cs, settings=Settings(home=base / "prep", store=store.root), up_to=papers
    )
    print(f"prepared: {report.embedded} embedded in {time.perf_counter() - t0:.1f} s (untimed)")
    ray.shutdown()  # the timed runs start their own, as on a fresh machine
    return base / "template"


def _direct(template: Path, papers: int, epochs: int, batch: int, lr: float) -> float:
    """Snapshot + the same 4-cell pack through the sweep's training task, in this
    process: the training floor."""
    t0 = time.perf_counter()
    store = Store(str(template))
    snap = fix_snapshot(store, get_domain("cs.LG"), embedder_name("minilm"), limit=papers)
    params = GridParams(
        k=K.split(","), n_latents=N.split(","), epochs=epochs, batch_size=batch, lr=lr
    )
    spec = sweep_pack(params, "direct", store, snap, code_version())
    with tempfile.TemporaryDirectory() as scratch:
        train_pack(spec, store, Path(scratch), get_settings().torch_device())
    return time.perf_counter() - t0


#: Log lines that end each phase of a sweep, in order: (phase, text the line holds).
_PHASES = (
    ("start: checks, Prefect server, imports, MLflow, Ray", "a Prefect server for this run"),
    ("flow to its data snapshot", " on snapshot "),
    ("to the training pack's start", "for flow 'train-packs'"),
    ("training pack (a Ray worker)", "Task run 'log-k"),
    ("records, plots, server stop", None),
)


def _sweep(home: Path, papers: int, epochs: int, batch: int, lr: float) -> dict[str, float]:
    """Seconds of each phase of a `sae sweep`, stamped as its log lines arrive."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(SAE_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("SAE_STORE", None)
    argv = [sys.executable, "-m", "flows.cli", "sweep", "cs.LG", "--k", K, "--n", N]
    argv += ["--limit", str(papers), "--epochs", str(epochs), "--batch-size", str(batch)]
    argv += ["--lr", str(lr)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        for phase, text in _PHASES:
            if text and phase not in seen and text in line:
                seen[phase] = time.perf_counter() - t0
    proc.wait()
    seen[_PHASES[-1][0]] = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sae sweep failed ({proc.returncode}):\n{''.join(lines)[-6000:]}")
    phases, before = {}, 0.0
    for phase, _ in _PHASES:  # a phase not logged (a rerun trains nothing) took 0 s
        end = seen.get(phase, before)
        phases[phase], before = end - before, end
    return phases


def main() -> None:
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("SAE_ARXIV_DATA", default_data))
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        template = _prepare(base, args.data, args.papers)
        direct = _direct(template, args.papers, args.epochs, args.batch_size, args.lr)
        home = base / "home"
        shutil.copytree(template, home / "store")
        first = _sweep(home, args.papers, args.epochs, args.batch_size, args.lr)
        again = _sweep(home, args.papers, args.epochs, args.batch_size, args.lr)

    total, rerun = sum(first.values()), sum(again.values())
    print(
        f"4 cells (k {K} x n {N}), {args.papers} papers, {args.epochs} epochs, "
        f"batch {args.batch_size}, {os.cpu_count()} CPU cores"
    )
    print(f"  direct (snapshot + PackTrainer):      {direct:7.1f} s")
    print(f"  sae sweep (Prefect + Ray + MLflow):   {total:7.1f} s")
    for phase, seconds in first.items():
        print(f"    {phase:<52} {seconds:5.1f} s")
    print(f"  orchestration overhead:               {total - direct:7.1f} s  (target <= 25 s)")
    print(f"  rerun of the finished sweep:          {rerun:7.1f} s  (target <= 20 s)")


if __name__ == "__main__":
    main()
