"""Recording a sweep in MLflow: a parent run, one child run and one model version per cell.

Every step looks for what an earlier attempt already recorded (runs by their tags, model
versions by their run id) before creating anything, so retries and reruns never
duplicate a run or a version. A child run counts only once its ``complete`` tag is set;
one left half-logged by a crash is deleted and logged again.

Names: params ``k, n_latents, d_in, embedder, data_snapshot, code_version`` and every
training setting of :class:`tasks.sweep.config.GridParams` (``batch_size, lr, epochs,
...``); final metrics as in :class:`sae.metrics.EvalMetrics`, plus ``importance_exponent``
and ``importance_r2`` (the power-law fit of :mod:`sae.importance`); per-step metrics
``train_loss, train_nmse, train_auxk_loss, train_dead_fraction, lr``; the retrieval
fidelity of :mod:`sae.retrieval` (``retrieval_recall_at_10``, ``retrieval_ndcg_at_10``,
``retrieval_corpus_*``, ``sparse_recall_at_10``). A Matryoshka cell
also logs, per prefix m, ``prefix_nmse_{m}`` and ``prefix_dead_fraction_{m}`` (its
prefixes.json); its params ``arch, prefixes, ...`` are its own cfg.json's. The grid's
n-axis Matryoshka cells (``n_axis_matryoshka``) are runs ``k{k}-n{n}-matryoshka`` and
models ``sae-{domain}-k{k}-n{n}-matryoshka``, never the champion.

Champion rule (one ``champion`` alias per domain): among the sweep's cells whose held-out
dead fraction is at most ``champion_max_dead``, the lowest held-out NMSE; ties go to the
smaller k, then the smaller n. If no cell qualifies, the lowest NMSE overall.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.code_version import package_requirements
from infra.store import Store
from infra.tracking import NOTE_TAG, experiment_name
from sae.checkpoint import CFG_FILE
from sae.config import SAEConfig
from sae.importance import power_law_fit
from sae.metrics import METRIC_NAMES
from sae.model import TopKSAE
from sae.trainer import STATE_FILE
from tasks.sweep.config import SweepParams
from tasks.sweep.train import (
    CELL_FILES,
    DENSITY_FILE,
    HISTORY_FILE,
    IMPORTANCE_FILE,
    PREFIXES_FILE,
    PRUNING_FILE,
    RETRIEVAL_FILE,
    CellRef,
    pull_cell,
)

log = logging.getLogger(__name__)
# MLflow itself is imported where it is used: a Ray worker that trains a pack imports this
# module (through tasks.sweep.steps) and never logs to MLflow; the import costs 2-4 s.

CHAMPION = "champion"
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


@dataclass(frozen=True)
class SweepContext:
    """What every run of one sweep in one domain shares."""

    sweep_id: str
    domain: str
    experiment_id: str
    data_snapshot: str
    embedder: str
    code_version: str
    train_params: dict[str, str]
    """The training settings (``GridParams.mlflow_params``)."""
    git_commit: str | None = None  # provenance only: the code_version is what decides

    def tags(self) -> dict[str, str]:
        tags = {
            "sweep_id": self.sweep_id,
            "domain": self.domain,
            "data_snapshot": self.data_snapshot,
            "embedder": self.embedder,
            "code_version": self.code_version,
        }
        return tags | ({"git_commit": self.git_commit} if self.git_commit else {})

    def params(self) -> dict[str, str]:
        return {
            **self.train_params,
            "embedder": self.embedder,
            "data_snapshot": self.data_snapshot,
            "code_version": self.code_version,
        }


def model_name(domain: str, k: int, n_latents: int, n_axis: bool = False) -> str:
    return f"sae-{domain}-{run_name(k, n_latents, n_axis)}"


def run_name(k: int, n_latents: int, n_axis: bool = False) -> str:
    """``k16-n12288``; ``k16-n12288-matryoshka`` for the n-axis cell of that (k, n)."""
    return f"k{k}-n{n_latents}" + ("-matryoshka" if n_axis else "")


def open_parent(client, ctx: SweepContext, grid: dict) -> str:
    """The sweep's parent run (found by its sweep id, or created), marked running."""
    found = _search(client, ctx, "tags.run_kind = 'sweep'")
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(
        ctx.experiment_id,
        run_name=f"sweep-{ctx.sweep_id}",
        tags={**ctx.tags(), "run_kind": "sweep"},
    )
    _log_params(client, run.info.run_id, {**ctx.params(), **grid})
    return run.info.run_id


def close_parent(client, run_id: str, ok: bool) -> None:
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def log_cell(client, store: Store, ctx: SweepContext, parent_id: str, ref: CellRef) -> str:
    """The cell's child run with params, curves, final metrics, files and model."""
    for run in _search(client, ctx, f"tags.run_kind = 'cell' and tags.cell = '{ref.cell}'"):
        if run.data.tags.get("complete") == "true":
            return run.info.run_id
        client.delete_run(run.info.run_id)  # half-logged by an earlier attempt
    run = client.create_run(
        ctx.experiment_id,
        run_name=run_name(ref.k, ref.n_latents, ref.n_axis),
        tags={
            **ctx.tags(),
            "run_kind": "cell",
            "cell": ref.cell,
            "mlflow.parentRunId": parent_id,
        },
    )
    run_id = run.info.run_id
    params = {**ctx.params(), "k": str(ref.k), "n_latents": str(ref.n_latents)}
    params["d_in"] = str(ref.d_in)
    with tempfile.TemporaryDirectory() as tmp:
        # The published files, not the resume state.
        names = tuple(n for n in CELL_FILES if n != STATE_FILE)
        local = pull_cell(store, ref.folder, Path(tmp) / ref.cell, names)
        params.update(_arch_params(local / CFG_FILE))
        _log_params(client, run_id, params)
        _log_history(client, run_id, local / HISTORY_FILE)
        _log_final(client, run_id, ref)
        _log_importance_fit(client, run_id, local / IMPORTANCE_FILE, ref.steps)
        _log_json_metrics(client, run_id, local / RETRIEVAL_FILE, ref.steps)
        _log_prefixes(client, run_id, local / PREFIXES_FILE, ref.steps)
        client.log_artifacts(run_id, str(local), "checkpoint")
        model_id = _log_model(run_id, local)
    client.set_tag(run_id, "model_id", model_id)
    client.set_tag(run_id, "complete", "true")
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def register_cell(client, ctx: SweepContext, ref: CellRef, run_id: str) -> str:
    """The model version of the cell's run (created once) in ``sae-{domain}-k{k}-n{n}``."""
    from mlflow.exceptions import MlflowException

    name = model_name(ctx.domain, ref.k, ref.n_latents, ref.n_axis)
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return existing[0].version
    try:
        client.create_registered_model(
            name, tags={"domain": ctx.domain}, description=f"TopK SAE, {ctx.domain}"
        )
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    model_id = client.get_run(run_id).data.tags["model_id"]
    version = client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run_id,
        model_id=model_id,
        tags={**ctx.tags(), "nmse": str(ref.metrics["nmse"])},
    )
    return version.version


def choose_champion(refs: Sequence[CellRef], max_dead: float) -> CellRef:
    if not refs:
        raise ValueError("no finished cells to choose a champion from")
    pool = [r for r in refs if r.metrics["dead_fraction"] <= max_dead] or list(refs)
    return min(pool, key=lambda r: (r.metrics["nmse"], r.k, r.n_latents))


def set_champion(client, ctx: SweepContext, ref: CellRef, version: str, run_ids: dict) -> None:
    """Move the domain's ``champion`` alias to ``ref``'s version (off every other model)."""
    name = model_name(ctx.domain, ref.k, ref.n_latents)
    for model in client.search_registered_models(f"name LIKE 'sae-{ctx.domain}-k%'"):
        if model.name != name and CHAMPION in (getattr(model, "aliases", None) or {}):
            client.delete_registered_model_alias(model.name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    for cell, run_id in run_ids.items():
        client.set_tag(run_id, CHAMPION, "true" if cell == ref.cell else "false")


def log_summary(client, parent_id: str, table_md: str, rows: list[dict], plots: list[Path]):
    """Results table, rows, plots and headline metrics on the parent run; the table is also
    its description, so the UI shows it on the run's page."""
    client.set_tag(parent_id, NOTE_TAG, f"Held-out metrics per cell (`*`: champion).\n\n{table_md}")
    client.log_text(parent_id, table_md, "results.md")
    client.log_dict(parent_id, {"cells": rows}, "results.json")
    for path in plots:
        client.log_artifact(parent_id, str(path), "plots")
    best = min(rows, key=lambda r: r["nmse"])
    client.log_metric(parent_id, "best_nmse", best["nmse"])
    client.log_metric(parent_id, "cells_finished", len(rows))


def load_history(store: Store, ref: CellRef) -> list[tuple[int, dict[str, float]]]:
    try:
        raw = store.read_json(f"{ref.folder}/{HISTORY_FILE}")
    except FileNotFoundError:
        return []
    return sorted((int(s), m) for s, m in raw.items())


def load_density(store: Store, ref: CellRef):
    try:
        return np.load(io.BytesIO(store.read_bytes(f"{ref.folder}/{DENSITY_FILE}")))
    except FileNotFoundError:
        return None


def load_importance(store: Store, ref: CellRef):
    """The cell's importance.npy [n], or None for a cell finished before it was kept."""
    try:
        return np.load(io.BytesIO(store.read_bytes(f"{ref.folder}/{IMPORTANCE_FILE}")))
    except FileNotFoundError:
        return None


def load_pruning(store: Store, ref: CellRef) -> dict[int, float] | None:
    """The cell's pruning.json as {m: NMSE}, or None for a cell finished before it was kept."""
    try:
        raw = store.read_json(f"{ref.folder}/{PRUNING_FILE}")
    except FileNotFoundError:
        return None
    return {int(m): float(v) for m, v in raw.items()}


def load_retrieval(store: Store, ref: CellRef) -> dict[str, float] | None:
    """The cell's retrieval.json, or None for a cell finished before it was kept."""
    try:
        return store.read_json(f"{ref.folder}/{RETRIEVAL_FILE}")
    except FileNotFoundError:
        return None


def load_prefixes(store: Store, ref: CellRef) -> dict[int, float] | None:
    """An n-axis Matryoshka cell's prefixes.json as {m: held-out NMSE of prefix m}."""
    try:
        raw = store.read_json(f"{ref.folder}/{PREFIXES_FILE}")
    except FileNotFoundError:
        return None
    return {int(m): float(v["nmse"]) for m, v in raw.items()}


def finished_before(client, params: SweepParams, code_version: str) -> bool:
    """Whether each domain of ``params`` has a finished sweep of this code with the same
    training settings over at least these cells: then a rerun most likely trains nothing
    (unless new papers changed the data snapshot), so starting Ray ahead is not worth it."""
    want = params.mlflow_params()
    query = (
        f"tags.run_kind = 'sweep' and tags.code_version = '{code_version}' "
        "and attributes.status = 'FINISHED'"
    )
    for domain in params.domains:
        experiment = client.get_experiment_by_name(experiment_name(domain))
        if experiment is None:
            return False
        runs = client.search_runs([experiment.experiment_id], query, max_results=50)
        if not any(_covers(run.data.params, params, want) for run in runs):
            return False
    return True


def _covers(logged: dict[str, str], params: SweepParams, want: dict[str, str]) -> bool:
    if any(logged.get(k) != v for k, v in want.items()):
        return False
    try:
        ks, ns = json.loads(logged["k"]), json.loads(logged["n_latents"])
    except (KeyError, ValueError):
        return False
    return set(params.k) <= set(ks) and set(params.n_latents) <= set(ns)


def _search(client, ctx: SweepContext, extra: str):
    query = f"tags.sweep_id = '{ctx.sweep_id}' and {extra}"
    return client.search_runs([ctx.experiment_id], filter_string=query, max_results=50)


def _log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])


def _log_history(client, run_id: str, path: Path) -> None:
    from mlflow.entities import Metric

    if not path.is_file():
        return
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(step))
        for step, values in sorted((int(s), m) for s, m in json.loads(path.read_text()).items())
        for key, value in values.items()
    ]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH])


def _log_final(client, run_id: str, ref: CellRef) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(ref.metrics[k]), now, ref.steps) for k in METRIC_NAMES]
    metrics.append(Metric("train_seconds", float(ref.seconds), now, ref.steps))
    client.log_batch(run_id, metrics=metrics)


_ARCH_PARAMS = ("arch", "prefixes", "matryoshka_selection", "threshold_decay")


def _arch_params(cfg_path: Path) -> dict[str, str]:
    """The cell's own arch settings (an n-axis cell's differ from the grid's; a Matryoshka
    grid's prefixes are resolved per n), as the cell's cfg.json records them."""
    sae = json.loads(cfg_path.read_text())["sae"]
    known = {f: getattr(SAEConfig(d_in=1, n_latents=1, k=1), f) for f in _ARCH_PARAMS}
    return {f: str(sae.get(f, known[f])) for f in _ARCH_PARAMS}


def _log_prefixes(client, run_id: str, path: Path, step: int) -> None:
    """``prefix_nmse_{m}`` and ``prefix_dead_fraction_{m}`` of a Matryoshka cell."""
    from mlflow.entities import Metric

    if not path.is_file():
        return
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"prefix_{name}_{m}", float(row[name]), now, step)
        for m, row in json.loads(path.read_text()).items()
        for name in ("nmse", "dead_fraction")
    ]
    client.log_batch(run_id, metrics=metrics)


def _log_importance_fit(client, run_id: str, path: Path, step: int) -> None:
    """``importance_exponent`` and ``importance_r2`` of the power-law fit, when known."""
    from mlflow.entities import Metric

    if not path.is_file():  # a cell finished before importance was kept
        return
    fit = power_law_fit(np.load(path))
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"importance_{name}", value, now, step)
        for name, value in (("exponent", fit.exponent), ("r2", fit.r2))
        if np.isfinite(value)
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def _log_json_metrics(client, run_id: str, path: Path, step: int) -> None:
    """The finite numbers of a cell's metrics file (retrieval.json), when it has one."""
    from mlflow.entities import Metric

    if not path.is_file():  # a cell finished before the file was kept
        return
    now = int(time.time() * 1000)
    metrics = [
        Metric(name, float(value), now, step)
        for name, value in json.loads(path.read_text()).items()
        if isinstance(value, int | float) and np.isfinite(value)
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def _log_model(run_id: str, local: Path) -> str:
    """Logs the SAE as an MLflow pytorch model; returns its model id."""
    import mlflow

    model = TopKSAE.load(local)
    mlflow_pytorch_log = logging.getLogger("mlflow.pytorch")
    level = mlflow_pytorch_log.level
    # Pickle is what loads back as a TopKSAE with mlflow.pytorch.load_model; "pt2" would
    # need an input example and trace the graph. Its warning about pickle is known here.
    mlflow_pytorch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), mlflow.start_run(run_id=run_id, nested=True):
            warnings.simplefilter("ignore")
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                # Given: inferring requirements costs seconds per model.
                pip_requirements=package_requirements(),
                serialization_format="pickle",
            )
    finally:
        mlflow_pytorch_log.setLevel(level)
    return info.model_id
