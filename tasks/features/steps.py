"""The features flow's Prefect tasks: analyse cells on Ray, then record them in MLflow.

Like the sweep's steps, none has Prefect retries: Ray reruns a task whose worker died,
and a rerun of the flow reuses every cell already analysed (its ``features.json``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from prefect import task

from infra.progress import StageProgress
from infra.retries import WORKER_RETRIES
from infra.settings import get_settings
from infra.store import Store
from tasks.embed.snapshot import snapshot_by_id
from tasks.features import lineage
from tasks.features.families import CleanRule
from tasks.features.locate import CellInfo, SweepInfo
from tasks.features.run import DOC_FILE, PAGE_FILE, CellJob, analyse_cell
from tasks.sweep.load import load_cell_model
from tasks.sweep.track import model_name

log = logging.getLogger(__name__)


def cell_jobs(
    store: Store, info: SweepInfo, cells: list[CellInfo], versions: dict, clean: CleanRule
) -> list:
    from tasks.corpus.domains import get_domain
    from tasks.features.locate import FeaturesInputError

    snap = snapshot_by_id(store, get_domain(info.domain), info.embedder, info.data_snapshot)
    if snap is None:
        raise FeaturesInputError(
            f"data snapshot {info.data_snapshot} of sweep {info.sweep_id} is not in the store "
            f"{store.uri('')}; is SAE_STORE the one the sweep wrote to?"
        )
    return [
        CellJob(
            store_root=store.root,
            storage_options=store.storage_options,
            domain=info.domain,
            embedder=info.embedder,
            snapshot_path=snap.path,
            sweep_id=info.sweep_id,
            cell=c.cell,
            folder=c.folder(info.sweep_id),
            model=versions.get(c.cell, model_name(info.domain, c.k, c.n_latents, c.n_axis)),
            clean=clean,
            vector_budget_bytes=get_settings().vector_budget_bytes,
        )
        for c in cells
    ]


def _analyse_remote(job: CellJob, scratch: str, device: str) -> dict:
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:  # Ray sets OMP_NUM_THREADS=1 in workers; the task owns the cores it asked for
        torch.set_num_threads(max(1, int(cpus)))
    return analyse_cell(job, Path(scratch), device)


@task(name="analyse-cells")
def analyse_cells(jobs: list[CellJob]) -> dict[str, dict]:
    """Each unanalysed cell as one Ray task (a whole node's cores, or one GPU with one CPU);
    no Ray at all when every cell is analysed already."""
    settings = get_settings()
    store = Store.from_settings(settings)
    results: dict[str, dict] = {}
    todo = []
    for job in jobs:
        try:
            doc = store.read_json(f"{job.features_folder()}/{DOC_FILE}")
            results[job.cell] = {"summary": doc["summary"], "reused": True}
        except FileNotFoundError:
            todo.append(job)
    if not todo:
        return results
    import ray

    from infra.ray_runtime import cpus_per_node, ensure_ray

    cluster = ensure_ray(settings)
    gpu = cluster.get("GPU", 0) > 0
    opts = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": cpus_per_node()}
    remote = ray.remote(_analyse_remote).options(max_retries=WORKER_RETRIES, **opts)
    scratch = str(settings.home / "scratch")
    refs = {remote.remote(j, scratch, "cuda" if gpu else "cpu"): j for j in todo}
    errors = []
    with StageProgress("features", len(todo), "cells") as shown:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                results[job.cell] = ray.get(done[0])
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc
                errors.append(f"{job.cell}: {type(cause).__name__}: {cause}")
            shown.update(len(todo) - len(refs), latest=job.cell)
    if errors:
        raise FeaturesFailedError(
            f"{len(errors)} cell(s) failed (the rest are stored; rerun to retry): "
            + "; ".join(errors)
        )
    return results


@task(name="llm-labels", task_run_name="llm-labels-{job.cell}")
def llm_labels_task(job: CellJob, n_features: int) -> dict:
    """LLM labels of the cell's densest features (network-bound: runs here, not on Ray)."""
    from tasks.features.llm_step import llm_label_cell

    return llm_label_cell(job, get_settings(), n_features)


class FeaturesFailedError(RuntimeError):
    """Some cells could not be analysed; the others are stored and recorded."""


@task(name="record-features", task_run_name="record-{cell.cell}")
def record_cell(info: SweepInfo, cell: CellInfo, result: dict, folder: str) -> None:
    """Summary metrics on the cell's run; the page and summary on the sweep's parent run."""
    from infra.tracking import mlflow_client

    settings = get_settings()
    client, store = mlflow_client(settings), Store.from_settings(settings)
    summary = result["summary"]
    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
    _log_metrics(client, cell.run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / f"{cell.cell}.html"
        page.write_bytes(store.read_bytes(f"{folder}/{PAGE_FILE}"))
        client.log_artifact(info.parent_run_id, str(page), "features")
        client.log_artifact(cell.run_id, str(page), "features")
    client.log_dict(info.parent_run_id, summary, f"features/{cell.cell}.summary.json")


def _log_metrics(client, run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())])


def _decoder(store: Store, folder: str):
    return load_cell_model(store, folder).W_dec.detach()


@task(name="feature-splitting")
def splitting_report(info: SweepInfo) -> dict:
    """Across capacities: per k, each smaller-n cell's features matched into the largest n."""
    store = Store.from_settings(get_settings())
    grid = [c for c in info.cells if not c.n_axis]
    report: dict = {}
    for k in sorted({c.k for c in grid}):
        at_k = sorted((c for c in grid if c.k == k), key=lambda c: c.n_latents)
        if len(at_k) < 2:
            continue
        widest = at_k[-1]
        W_large = _decoder(store, widest.folder(info.sweep_id))
        for small in at_k[:-1]:
            W_small = _decoder(store, small.folder(info.sweep_id))
            split = lineage.splitting(W_small, W_large)
            split["match_cos"] = split["match_cos"].round(4)
            report[f"{small.cell}->{widest.cell}"] = _plain(split)
    return report


@task(name="feature-lineage")
def lineage_report(info: SweepInfo, prev: SweepInfo) -> dict:
    """The champion's features against the previous sweep's champion's (same embedder)."""
    store = Store.from_settings(get_settings())
    new, old = info.champion, prev.champion
    W_new = _decoder(store, new.folder(info.sweep_id))
    W_old = _decoder(store, old.folder(prev.sweep_id))
    result = lineage.compare(W_old, W_new)
    return {
        "previous_sweep": prev.sweep_id,
        "previous_champion": old.cell,
        "champion": new.cell,
        "counts": result.counts(),
    }


@task(name="plot-probes")
def plot_probes(info: SweepInfo, summaries: dict[str, dict]) -> bool:
    """The cells' category-probe F1 against k (:func:`tasks.sweep.plots.probe_plot`) on the
    sweep's parent run, beside its other plots; False when no cell has probes."""
    from infra.tracking import mlflow_client
    from tasks.sweep.plots import probe_plot

    rows = [
        {"k": c.k, "n_latents": c.n_latents, **summaries[c.cell]}
        for c in info.cells
        if summaries.get(c.cell, {}).get("probe_categories")
    ]
    if not rows:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = probe_plot(rows, Path(tmp) / "probes_vs_k.png", domain=info.domain)
        mlflow_client(get_settings()).log_artifact(info.parent_run_id, str(path), "plots")
    return True


@task(name="record-lineage")
def record_reports(info: SweepInfo, splitting: dict, lineage_: dict | None) -> None:
    from infra.tracking import mlflow_client

    client = mlflow_client(get_settings())
    if splitting:
        client.log_dict(info.parent_run_id, splitting, "features/splitting.json")
        counts = {}
        for pair, split in splitting.items():
            small = pair.split("->")[0]
            for what in ("n_split", "n_one", "n_none", "mean_best_cos"):
                counts[f"splitting_{small}_{what}"] = float(split[what])
        _log_metrics(client, info.parent_run_id, counts)
    if lineage_:
        client.log_dict(info.parent_run_id, lineage_, "features/lineage.json")
        _log_metrics(
            client,
            info.parent_run_id,
            {f"lineage_{k}": float(v) for k, v in lineage_["counts"].items()},
        )


def _plain(obj):
    """numpy scalars and arrays as JSON values."""
    return json.loads(json.dumps(obj, default=_default))


def _default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON: {type(o).__name__}")
