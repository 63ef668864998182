"""The sweep's Prefect tasks: each one step, each returning references (ids, URIs, small
dicts), never tensors or frames. The flow in ``flows/sweep.py`` orders them.

None has Prefect retries: the store, the embeddings client and Ray already retry what
may pass (:mod:`infra.retries`), and a rerun resumes a failed sweep where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import ray
import torch
from prefect import task

from infra.settings import get_settings
from infra.store import Store
from infra.tracking import mlflow_client
from tasks.corpus.domains import covering, get_domain
from tasks.corpus.ingest import ingest_source
from tasks.corpus.storage import count_papers
from tasks.embed.run import embed_domain
from tasks.embed.snapshot import Snapshot, fix_snapshot, snapshot_by_id
from tasks.layout import open_store
from tasks.sweep.config import SweepInputError
from tasks.sweep.pack_progress import PackReporter, total_steps
from tasks.sweep.placement import PlacementRecorder, placement_tags, read_placement
from tasks.sweep.plots import (
    density_histograms,
    importance_plot,
    pareto_plot,
    pruning_plot,
    retrieval_plot,
    training_curves,
)
from tasks.sweep.preflight import no_papers, unknown_snapshot
from tasks.sweep.track import (
    load_density,
    load_history,
    load_importance,
    load_prefixes,
    load_pruning,
    load_retrieval,
    log_cell,
    register_cell,
)
from tasks.sweep.train import CellRef, PackSpec, device_name, finished_cells, train_pack

log = logging.getLogger(__name__)


def _store() -> Store:
    return open_store(get_settings())


@task(name="ensure-corpus")
def ensure_corpus(domains: list[str], source: str | None) -> dict[str, int]:
    """Ingest ``source`` once for all ``domains`` (when given) and check each has papers;
    returns each domain's paper count."""
    store = _store()
    if source:
        report = ingest_source(store, covering(domains), source)
        log.info("%s", report.summary())
    counts = count_papers(store, [get_domain(name) for name in domains])
    for name, n in counts.items():
        if n == 0:
            raise no_papers(store, get_domain(name))
    return counts


@task(name="ensure-embeddings")
def ensure_embeddings(domain: str, embedder: str | None, up_to: int | None) -> dict:
    """Embed the papers that have no vector yet (at most until ``up_to`` are embedded)."""
    settings = get_settings()
    report = embed_domain(
        _store(), get_domain(domain), settings=settings, spec=embedder, up_to=up_to
    )
    if report.embedded:
        log.info(
            "%s: embedded %d new papers on %d Ray node(s)", domain, report.embedded, report.nodes
        )
    return asdict(report)


@task(name="fix-snapshot")
def fix_data_snapshot(
    domain: str, embedder: str, limit: int | None, pinned: str | None, batch_size: int
) -> Snapshot:
    """The fixed set of papers (ids + text hashes) the sweep trains on, with its split;
    refused when it holds fewer training papers than one batch."""
    store, dom = _store(), get_domain(domain)
    if pinned:
        snap = snapshot_by_id(store, dom, embedder, pinned)
        if snap is None:
            raise unknown_snapshot(dom, embedder, pinned)
    else:
        snap = fix_snapshot(store, dom, embedder, limit=limit)
    if snap.n_train == 0 or snap.n_eval == 0:
        # The split is by id hash (1 in 20 held out), so a few dozen papers may hold none.
        raise SweepInputError(
            f"data snapshot {snap.id} of {domain} has {snap.n_train} training and "
            f"{snap.n_eval} held-out papers; both must be > 0: embed more papers"
            + ("" if limit is None else f" or raise --limit ({limit})")
        )
    if snap.n_train < batch_size:
        raise SweepInputError(
            f"data snapshot {snap.id} of {domain} has {snap.n_train} training papers, fewer "
            f"than one batch ({batch_size}): lower --batch-size or embed more papers"
            + ("" if limit is None else f" (--limit {limit})")
        )
    return snap


@task(name="train-pack", task_run_name="{spec.label}")
def train_pack_task(spec: PackSpec) -> list[dict]:
    """One Ray task: train the pack's unfinished cells, resuming from their checkpoints
    (Ray runs it again if its worker dies: the ``max_retries`` of ``pack_resources``)."""
    settings = get_settings()
    _use_assigned_cpus()
    steps = total_steps(spec.train.epochs, spec.data.n_train, spec.train.batch_size)
    reporter = PackReporter(spec.label, steps)
    store, scratch = spec.store(), settings.home / "scratch"
    device = settings.torch_device()
    on_log = PlacementRecorder(store, spec.folder, reporter, device_name(device))
    before = finished_cells(store, spec)
    refs = train_pack(spec, store, scratch, device, on_log)
    on_log.finish({r.cell: r.steps for r in refs if r.cell not in before})
    reporter.close()
    return [r.as_dict() for r in refs]


@task(name="log-cell", task_run_name="log-k{k}-n{n_latents}")
def log_cell_task(ctx, parent_id: str, ref: dict, k: int, n_latents: int) -> dict:
    """The cell's child run and registered model version (each created once)."""
    client = mlflow_client(get_settings())
    cell, store = CellRef(**ref), _store()
    run_id = log_cell(client, store, ctx, parent_id, cell)
    for key, value in placement_tags(read_placement(store, cell.folder)).items():
        client.set_tag(run_id, key, value)
    version = register_cell(client, ctx, cell, run_id)
    return {"run_id": run_id, "version": version}


def plot_sweep(
    store: Store, refs: list[CellRef], domain: str, out: Path, nested: list[CellRef] = ()
) -> list[Path]:
    """The parent run's plots: the NMSE-vs-k frontier, densities, training curves, latent
    importance and pruning (cells finished before those were kept are left out); the
    ``nested`` n-axis Matryoshka cells join the pruning plot as their prefixes."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"k": r.k, "n_latents": r.n_latents, **r.metrics} for r in refs]
    paths = [pareto_plot(rows, out / "nmse_vs_k.png", domain=domain)]
    densities = {f"k{r.k}-n{r.n_latents}": load_density(store, r) for r in refs}
    densities = {k: v for k, v in densities.items() if v is not None}
    if densities:
        paths.append(density_histograms(densities, out / "feature_density.png"))
    curves = {
        f"k{r.k}-n{r.n_latents}": [(s, m["train_nmse"]) for s, m in load_history(store, r)]
        for r in refs
    }
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        paths.append(training_curves(curves, out / "training_nmse.png"))
    importances = {f"k{r.k}-n{r.n_latents}": load_importance(store, r) for r in refs}
    importances = {k: v for k, v in importances.items() if v is not None}
    if importances:
        paths.append(importance_plot(importances, out / "importance.png"))
    pruning = pruning_series(store, refs, nested)
    if pruning:
        paths.append(pruning_plot(pruning, out / "pruning.png"))
    retrieval = [
        {"k": r.k, "n_latents": r.n_latents, **found}
        for r in refs
        if (found := load_retrieval(store, r))
    ]
    if retrieval:
        paths.append(retrieval_plot(retrieval, out / "retrieval_vs_k.png"))
    return paths


def pruning_series(
    store: Store, refs: list[CellRef], nested: list[CellRef] = ()
) -> dict[int, dict[str, dict[int, float]]]:
    """Per k with cells at two n or more: the dedicated cells' NMSE at each n, the
    largest-n cell's NMSE pruned by importance to each of those n (its pruning.json) and,
    when the sweep trained one, the n-axis Matryoshka model's prefixes (prefixes.json)."""
    series: dict[int, dict[str, dict[int, float]]] = {}
    for k in sorted({r.k for r in refs}):
        cells = sorted((r for r in refs if r.k == k), key=lambda r: r.n_latents)
        largest = cells[-1]
        pruned = load_pruning(store, largest) if len(cells) > 1 else None
        if not pruned:
            continue
        ns = {r.n_latents for r in cells}
        series[k] = {
            "trained at n": {r.n_latents: r.metrics["nmse"] for r in cells},
            "largest n pruned by importance": {m: v for m, v in pruned.items() if m in ns},
        }
        for r in nested:
            prefixes = load_prefixes(store, r) if r.k == k else None
            if prefixes:
                series[k]["one Matryoshka model, prefix n"] = prefixes
    return series


def _use_assigned_cpus() -> None:
    # Ray sets OMP_NUM_THREADS=1 in workers; a CPU pack should use the cores it was given.
    if ray.is_initialized():
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
