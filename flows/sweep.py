"""The ``sweep`` flow: corpus -> embeddings -> data snapshot -> packs on Ray -> MLflow.

For all the domains at once: ingest ``source`` if given and embed what is missing (the
union of the domains, so a paper listed in several is embedded once). Per domain: check
it has papers, freeze a data snapshot, split the k x n grid into packs, train each pack as
one Ray task with its GPU share (the ``train-packs`` subflow, started only when some
cell is unfinished, so a rerun of a finished sweep starts no Ray at all), then record a
child run and a model version per cell, plots and a results table on the parent run,
and move the domain's ``champion`` alias.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from infra.code_version import code_version, git_commit
from infra.prefect_names import artifact_key
from infra.ray_runtime import ensure_ray, pack_resources
from infra.settings import get_settings
from infra.tracking import ensure_experiment, mlflow_client
from tasks.corpus.domains import covering, get_domain
from tasks.embed.embedders import embedder_name
from tasks.layout import open_store
from tasks.sweep.catalog import index_sweep
from tasks.sweep.config import SweepFailedError, SweepParams, sweep_id
from tasks.sweep.pack_progress import PackWatcher, flow_run_progress
from tasks.sweep.results import SWEEP_COLUMNS, results_table
from tasks.sweep.steps import (
    ensure_corpus,
    ensure_embeddings,
    fix_data_snapshot,
    log_cell_task,
    plot_sweep,
    train_pack_task,
)
from tasks.sweep.track import (
    SweepContext,
    choose_champion,
    close_parent,
    load_retrieval,
    log_summary,
    model_name,
    open_parent,
    set_champion,
)
from tasks.sweep.train import (
    CellRef,
    PackSpec,
    finished_cells,
    n_axis_spec,
    plan,
    sweep_pack,
    unfinished,
)

log = logging.getLogger(__name__)


@dataclass
class DomainResult:
    domain: str
    sweep_id: str
    data_snapshot: str
    parent_run_id: str
    cells: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    champion: str | None = None
    features: Any = None  # flows.features.DomainFeatures, with ``params.features``


@flow(name="train-packs")
def train_packs(specs: list[PackSpec], resources: dict, total_cells: int, done_cells: int):
    """One Ray task per pack; returns (refs of finished cells, errors of failed packs)."""
    progress = create_progress_artifact(
        progress=100.0 * done_cells / total_cells,
        description=f"cells done / total ({total_cells})",
    )
    with remote_options(**resources):
        futures = {train_pack_task.submit(spec): spec for spec in specs}
    refs: list[dict] = []
    errors: dict[str, str] = {}
    done = done_cells
    # Each pack's step, as its task records it in Prefect: a live line per pack here.
    watcher = PackWatcher(flow_run_progress(flow_run.id)).start()
    try:
        for fut in as_completed(list(futures)):
            spec = futures[fut]
            try:
                cells = fut.result()
            except Exception as exc:
                errors[spec.label] = f"{type(exc).__name__}: {exc}"
                continue
            refs.extend(cells)
            done += len(spec.cells)
            update_progress_artifact(progress, 100.0 * done / total_cells)
    finally:
        watcher.stop()
    return refs, errors


@flow(name="sweep")
def sweep(params: SweepParams = SweepParams()) -> list[DomainResult]:  # noqa: B008
    """Train the k x n grid of TopK SAEs per domain and record it in MLflow."""
    logger = get_run_logger()
    settings = get_settings()
    store = open_store(settings, writable=True)
    client = mlflow_client(settings)
    version = code_version()
    spec = params.embedder or settings.embedder
    embedder = embedder_name(spec)

    corpus = ensure_corpus(params.domains, params.source)
    if params.data_snapshot is None:
        # With --limit each domain gets its own N (the union's first N could miss one).
        for group in [params.domains] if params.limit is None else [[d] for d in params.domains]:
            ensure_embeddings(covering(group).name, spec, params.limit)

    results = []
    for domain in params.domains:
        dom = get_domain(domain)
        experiment_id = ensure_experiment(client, settings, domain, dom.slug, embedder)
        logger.info("%s: %d papers in the corpus", domain, corpus[domain])
        snap = fix_data_snapshot(
            domain, embedder, params.limit, params.data_snapshot, params.batch_size
        )
        sid = sweep_id(params, dom.slug, snap.data_key, version)
        logger.info(
            "%s: sweep %s on snapshot %s (%d train / %d eval)",
            domain,
            sid,
            snap.id,
            snap.n_train,
            snap.n_eval,
        )
        results.append(
            _sweep_domain(params, settings, store, client, experiment_id, domain, snap, sid)
        )

    failed = [f"{r.domain}: {msg}" for r in results for msg in r.failed]
    if params.features and not failed:
        from flows.features import features as features_flow
        from tasks.features.params import FeaturesParams

        for r in results:
            (r.features,) = features_flow(FeaturesParams(domains=[r.domain], sweep=r.sweep_id))
    if failed:
        raise SweepFailedError(
            f"{len(failed)} pack(s) failed (finished cells are recorded; rerun to resume): "
            + "; ".join(failed)
        )
    return results


def _sweep_domain(params, settings, store, client, experiment_id, domain, snap, sid):
    version = code_version()
    ctx = SweepContext(
        sweep_id=sid,
        domain=domain,
        experiment_id=experiment_id,
        data_snapshot=snap.id,
        embedder=snap.embedder,
        code_version=version,
        train_params=params.mlflow_params(),
        git_commit=git_commit(),
    )
    parent = open_parent(client, ctx, {"k": params.k, "n_latents": params.n_latents})
    result = DomainResult(domain, sid, snap.id, parent)

    # Which cells are done already decides whether Ray is needed at all.
    grid = sweep_pack(params, sid, store, snap, version)
    nested = n_axis_spec(grid, params)  # no cells unless params.n_axis_matryoshka
    done = {**finished_cells(store, grid), **finished_cells(store, nested)}
    refs = [r.as_dict() for r in done.values()]
    todo, nested_todo = unfinished(grid, done), unfinished(nested, done)
    total = len(grid.cells) + len(nested.cells)
    if todo or nested_todo:
        cluster = ensure_ray(settings)
        gpus = params.gpus_per_pack or settings.pack_gpus
        resources, n_packs = pack_resources(cluster, gpus, params.n_packs)
        specs = plan(grid, todo, n_packs) if todo else []
        specs += plan(nested, nested_todo, n_packs) if nested_todo else []
        runner = train_packs.with_options(task_runner=RayTaskRunner())  # joins ensure_ray's Ray
        new_refs, errors = runner(specs, resources, total, len(done))
        refs += new_refs
        result.failed = [f"{label}: {err}" for label, err in errors.items()]

    every = sorted((CellRef(**r) for r in refs), key=lambda r: (r.k, r.n_latents, r.n_axis))
    # The n-axis cells are logged and registered beside the grid; the champion, the table's
    # champion mark and the grid's plots are the grid's.
    cells = [r for r in every if not r.n_axis]
    run_ids, versions = {}, {}
    for ref in every:
        out = log_cell_task(ctx, parent, ref.as_dict(), ref.k, ref.n_latents)
        run_ids[ref.cell], versions[ref.cell] = out["run_id"], out["version"]
    rows = [
        {
            **r.row(),
            **(load_retrieval(store, r) or {}),
            "model": f"{model_name(domain, r.k, r.n_latents, r.n_axis)}/{versions[r.cell]}",
        }
        for r in every
    ]
    if cells:
        champion = choose_champion(cells, params.champion_max_dead)
        set_champion(client, ctx, champion, versions[champion.cell], run_ids)
        result.champion = champion.cell
        for row in rows:
            row["champion"] = row["cell"] == champion.cell
        table = results_table(rows, SWEEP_COLUMNS)
        with tempfile.TemporaryDirectory() as tmp:
            n_axis_refs = [r for r in every if r.n_axis]
            plots = plot_sweep(store, cells, domain, Path(tmp), n_axis_refs)
            log_summary(client, parent, table, rows, plots)
        create_markdown_artifact(
            markdown=f"## Sweep {sid} ({domain})\n\n{table}\n",
            key=artifact_key(f"sweep-{sid}"),
            description=f"results of sweep {sid}",
        )
    result.cells = rows
    close_parent(client, parent, ok=not result.failed and len(every) == total)
    index_sweep(store, client, domain, sid)  # what `sae search` reads instead of MLflow
    return result
