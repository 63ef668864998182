"""The ``sweep`` flow: corpus -> embeddings -> data snapshot -> packs on Ray -> MLflow.

Per domain: make sure the corpus has papers (ingesting ``source`` if given), embed what
is missing, freeze a data snapshot, split the k x n grid into packs, train each pack as
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

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed

from infra.settings import get_settings
from infra.store import Store
from tasks.sweep.config import SweepParams, sweep_id
from tasks.sweep.steps import (
    ensure_corpus,
    ensure_embeddings,
    fix_data_snapshot,
    log_cell_task,
    plot_sweep,
    train_pack_task,
)
from tasks.sweep.train import CellRef, PackSpec, finished_cells

log = logging.getLogger(__name__)


class SweepFailedError(RuntimeError):
    """Some cells did not finish; the finished ones are recorded."""


@dataclass
class DomainResult:
    domain: str
    sweep_id: str
    data_snapshot: str
    parent_run_id: str
    cells: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    champion: str | None = None


@flow(name="train-packs")
def train_packs(specs: list[PackSpec], resources: dict, total_cells: int, done_cells: int):
    """One Ray task per pack; returns (refs of finished cells, errors of failed packs)."""
    from prefect_ray.context import remote_options

    progress = create_progress_artifact(
        progress=100.0 * done_cells / total_cells,
        description=f"cells done / total ({total_cells})",
    )
    with remote_options(**resources):
        futures = {train_pack_task.submit(spec): spec for spec in specs}
    refs: list[dict] = []
    errors: dict[str, str] = {}
    done = done_cells
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
    return refs, errors


@flow(name="sweep")
def sweep(params: SweepParams = SweepParams()) -> list[DomainResult]:  # noqa: B008
    """Train the k x n grid of TopK SAEs per domain and record it in MLflow."""
    from infra.code_version import code_version
    from infra.tracking import ensure_experiment, mlflow_client
    from tasks.corpus.domains import get_domain
    from tasks.embed.embedders import embedder_name

    logger = get_run_logger()
    settings = get_settings()
    store = Store.from_settings(settings)
    store.check_writable()
    client = mlflow_client(settings)
    version = code_version()
    spec = params.embedder or settings.embedder
    embedder = embedder_name(spec)

    results = []
    for domain in params.domains:
        dom = get_domain(domain)
        experiment_id = ensure_experiment(client, settings, domain, dom.slug, embedder)
        corpus = ensure_corpus(domain, params.source)
        logger.info("%s: %d papers in the corpus", domain, corpus["papers"])
        if params.data_snapshot is None:
            ensure_embeddings(domain, spec, params.limit)
        snap = fix_data_snapshot(domain, embedder, params.limit, params.data_snapshot)
        sid = sweep_id(params, dom.slug, snap.id, version)
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
    if failed:
        raise SweepFailedError(
            f"{len(failed)} pack(s) failed (finished cells are recorded; rerun to resume): "
            + "; ".join(failed)
        )
    return results


def _sweep_domain(params, settings, store, client, experiment_id, domain, snap, sid):
    from prefect_ray import RayTaskRunner

    from infra.code_version import code_version, git_commit
    from infra.ray_runtime import ensure_ray, pack_resources
    from tasks.sweep.track import (
        SweepContext,
        choose_champion,
        close_parent,
        log_summary,
        model_name,
        open_parent,
        set_champion,
    )

    ctx = SweepContext(
        sweep_id=sid,
        domain=domain,
        experiment_id=experiment_id,
        data_snapshot=snap.id,
        embedder=snap.embedder,
        code_version=code_version(),
        batch_size=params.batch_size,
        lr=params.lr,
        epochs=params.epochs,
        git_commit=git_commit(),
    )
    parent = open_parent(client, ctx, {"k": params.k, "n_latents": params.n_latents})
    result = DomainResult(domain, sid, snap.id, parent)

    # Which cells are done already decides whether Ray is needed at all.
    all_cells = PackSpec(
        sid, store.root, store.storage_options, domain, snap, params.cells(),
        params.batch_size, params.epochs, params.lr, params.seed, code_version(),
        checkpoint_min_interval_s=params.checkpoint_every_s,
    )  # fmt: skip
    done = finished_cells(store, all_cells)
    refs = [r.as_dict() for r in done.values()]
    todo = [
        (k, n)
        for k, n in params.cells()
        if not any(r.k == k and r.n_latents == n for r in done.values())
    ]
    if todo:
        cluster = ensure_ray(settings)
        gpus = params.gpus_per_pack or settings.pack_gpus
        resources, n_packs = pack_resources(cluster, gpus, params.n_packs)
        specs = _plan(params, all_cells, todo, n_packs)
        runner = train_packs.with_options(task_runner=RayTaskRunner())  # joins ensure_ray's Ray
        new_refs, errors = runner(specs, resources, len(params.cells()), len(done))
        refs += new_refs
        result.failed = [f"{label}: {err}" for label, err in errors.items()]

    cells = sorted((CellRef(**r) for r in refs), key=lambda r: (r.k, r.n_latents))
    run_ids, versions = {}, {}
    for ref in cells:
        out = log_cell_task(ctx, parent, ref.as_dict(), ref.k, ref.n_latents)
        run_ids[ref.cell], versions[ref.cell] = out["run_id"], out["version"]
    rows = [
        {
            "cell": r.cell,
            "k": r.k,
            "n_latents": r.n_latents,
            **r.metrics,
            "seconds": r.seconds,
            "model": f"{model_name(domain, r.k, r.n_latents)}/{versions[r.cell]}",
        }
        for r in cells
    ]
    if cells:
        champion = choose_champion(cells, params.champion_max_dead)
        set_champion(client, ctx, champion, versions[champion.cell], run_ids)
        result.champion = champion.cell
        table = results_markdown(rows, champion.cell)
        with tempfile.TemporaryDirectory() as tmp:
            plots = plot_sweep(store, cells, domain, Path(tmp))
            log_summary(client, parent, table, rows, plots)
        create_markdown_artifact(
            markdown=f"## Sweep {sid} ({domain})\n\n{table}\n",
            key=f"sweep-{sid}".lower().replace("_", "-"),  # keys: a-z, 0-9, -
            description=f"results of sweep {sid}",
        )
    result.cells = rows
    close_parent(client, parent, ok=not result.failed and len(cells) == len(params.cells()))
    return result


def _plan(params: SweepParams, all_cells: PackSpec, todo, n_packs: int) -> list[PackSpec]:
    from dataclasses import replace

    from sae.config import SAEConfig
    from sae.planner import plan_packs

    d_in = 1  # the planner balances by n x batch; d_in does not change the split
    configs = [SAEConfig(d_in=d_in, n_latents=n, k=k) for k, n in todo]
    packs = plan_packs(configs, n_packs, params.batch_size)
    return [replace(all_cells, cells=[(c.k, c.n_latents) for c in p.cells]) for p in packs]


def results_markdown(rows: list[dict], champion: str | None = None) -> str:
    """The results table (held-out metrics), one row per cell; ``*`` marks the champion."""
    head = "| k | n | nmse | log FD | act mean | dead | auxk | s | model |"
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for r in rows:
        star = " *" if r["cell"] == champion else ""
        lines.append(
            f"| {r['k']} | {r['n_latents']} | {r['nmse']:.4f} | "
            f"{r['log_feature_density']:.3f} | {r['act_mean']:.4f} | "
            f"{r['dead_fraction']:.3f} | {r['auxk_loss']:.4f} | {r['seconds']:.1f} | "
            f"{r['model']}{star} |"
        )
    return "\n".join(lines)
