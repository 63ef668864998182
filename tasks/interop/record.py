"""An imported SAE recorded as our sweeps are (:mod:`tasks.sweep.track`), so that
``find_sweep``, ``sae search``, ``sae features`` and ``sae runs`` read it as one:

- a parent run ``run_kind=sweep`` with a sweep's tags (``sweep_id``, ``domain``,
  ``data_snapshot``, ``embedder``, ``code_version`` = ``imported``) plus
  ``imported_from``, its results table and the SAELens cfg it came with;
- one complete child run ``run_kind=cell`` with the cell's params, held-out metrics,
  checkpoint and logged model, tagged ``champion`` (its sweep's only cell);
- the sweep's index in the store (:mod:`tasks.sweep.catalog`), what ``sae search`` reads
  before MLflow.

No registered model: the domain's ``sae-{domain}-k{k}-n{n}`` models and their
``champion`` alias stay its sweeps'."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.settings import Settings
from infra.store import Store
from infra.tracking import ensure_experiment, experiment_name
from tasks.features.locate import IMPORTED
from tasks.sweep.catalog import index_path, index_sweep
from tasks.sweep.results import SWEEP_COLUMNS, results_table
from tasks.sweep.track import (
    CHAMPION,
    SweepContext,
    close_parent,
    load_retrieval,
    log_cell,
    log_summary,
    open_parent,
)
from tasks.sweep.train import CellRef


@dataclass(frozen=True)
class ImportRecord:
    """Where in MLflow an import goes."""

    sweep_id: str
    domain: str
    slug: str
    data_snapshot: str
    embedder: str
    source: Path
    """The folder imported."""


def record_import(
    client, settings: Settings, store: Store, rec: ImportRecord, ref: CellRef, cfg: dict
) -> tuple[str, str]:
    """(parent run id, cell run id) of the import, recorded once."""
    experiment_id = ensure_experiment(client, settings, rec.domain, rec.slug, rec.embedder)
    ctx = SweepContext(
        sweep_id=rec.sweep_id,
        domain=rec.domain,
        experiment_id=experiment_id,
        data_snapshot=rec.data_snapshot,
        embedder=rec.embedder,
        code_version=IMPORTED,
        train_params={"imported_from": str(rec.source), "source_format": "saelens"},
    )
    parent = open_parent(client, ctx, {"k": [ref.k], "n_latents": [ref.n_latents]})
    client.set_tag(parent, "imported_from", str(rec.source))
    run_id = log_cell(client, store, ctx, parent, ref)
    client.set_tag(run_id, CHAMPION, "true")
    row: dict[str, Any] = {**ref.row(), **(load_retrieval(store, ref) or {}), "champion": True}
    log_summary(client, parent, results_table([row], SWEEP_COLUMNS), [row], [])
    client.log_dict(parent, cfg, "saelens_cfg.json")
    close_parent(client, parent, ok=True)
    index_sweep(store, client, rec.domain, rec.sweep_id)  # what `sae search` reads first
    return parent, run_id


def forget_import(store: Store, client, domain: str, sweep_id: str) -> None:
    """Deletes the index and every run of the import ``sweep_id`` (after a failure)."""
    store.delete(index_path(sweep_id))
    experiment = client.get_experiment_by_name(experiment_name(domain))
    if experiment is None:
        return
    query = f"tags.sweep_id = '{sweep_id}'"
    for run in client.search_runs([experiment.experiment_id], query, max_results=100):
        client.delete_run(run.info.run_id)
