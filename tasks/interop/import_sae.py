"""``sae import-sae``: a SAELens TopK SAE trained on one of our embedders, imported as a
one-cell sweep of a domain, to search and analyse like ours.

Every check runs before anything is written: the folder is a SAELens TopK SAE whose
weights have its cfg's shapes (:func:`tasks.interop.saelens.read_saelens`); the embedder
(``--embedder``, else the one an export of ours recorded, else ``SAE_EMBEDDER``) is a
known spec, agrees with the one recorded, has vectors in the store, and its dimension
(``embeddings/{embedder}/_embedder.json``) is the SAE's d_in; the domain has papers
embedded with it. Then the cell's files are made in a temporary folder
(:mod:`tasks.interop.imported_cell`), copied into the store (metrics.json last, the
mark of a finished cell) and recorded in MLflow (:mod:`tasks.interop.record`); a
failure there removes what was written, so nothing half-imported stays.

- Sweep id: ``import-`` and 12 hex digits of a SHA-256 over the weights, k, the domain,
  the embedder and the data snapshot, so importing the same SAE again finds it.
- Cell: ``{domain}_{k}_{n}_{batch}``, batch as an export of ours recorded it, else 0.
- Data snapshot: the one an export of ours recorded, when the store holds it for this
  domain and embedder (a round trip searches the very same papers); else the domain's
  papers embedded now (:func:`tasks.embed.snapshot.fix_snapshot`).

Recorded as a sweep that finished now, it is the domain's newest: what ``sae search``
and ``sae features`` use without ``--sweep``, as after a sweep of ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.settings import Settings, get_settings
from infra.store import Store
from infra.tracking import mlflow_client
from sae.config import RunInfo, cell_name
from sae.model import TopKSAE
from sae.trainer import METRICS_FILE
from tasks.corpus.domains import Domain, get_domain
from tasks.embed.embedders import embedder_name
from tasks.embed.manifest import Namespace
from tasks.embed.rows import snapshot_rows
from tasks.embed.snapshot import (
    Snapshot,
    embedded_in,
    fix_snapshot,
    load_snapshot,
    snapshot_by_id,
)
from tasks.features.locate import IMPORT_PREFIX, IMPORTED, FeaturesInputError, find_sweep
from tasks.interop import InteropInputError
from tasks.interop.imported_cell import write_cell
from tasks.interop.record import ImportRecord, forget_import, record_import
from tasks.interop.saelens import own_metadata, read_saelens
from tasks.layout import open_store
from tasks.sweep.train import CellRef, sweep_folder

log = logging.getLogger(__name__)

#: Retrieval fidelity searches each held-out paper's 10 nearest training papers.
_MIN_TRAIN, _MIN_EVAL = 10, 1


@dataclass(frozen=True)
class Imported:
    domain: str
    sweep_id: str
    cell: str
    embedder: str
    data_snapshot: str
    n_papers: int
    metrics: dict[str, float]
    already: bool
    """Imported before: nothing was written this time."""


def import_sae(
    folder: Path, domain: str, embedder: str = "", settings: Settings | None = None
) -> Imported:
    """Imports the SAELens TopK SAE in ``folder`` into ``domain`` (module doc)."""
    model, cfg = read_saelens(folder)
    dom = get_domain(domain)
    settings = settings or get_settings()
    own = own_metadata(cfg)
    spec, name = _embedder(folder, own, embedder or own.get("embedder_spec") or settings.embedder)
    store = open_store(settings, writable=True)
    _check_dimension(store, folder, dom, spec, name, model.d_in)
    snap = _snapshot(store, dom, spec, name, own.get("data_snapshot"))
    sid = import_id(model, dom.name, name, snap.id)
    batch = own.get("batch_size")
    cell = cell_name(dom.name, model.k, model.n_latents, batch if _count(batch) else 0)
    rel = f"{sweep_folder(sid)}/{cell}"
    client = mlflow_client(settings)
    n_papers = snap.n_train + snap.n_eval
    if _recorded(client, dom.name, sid, cell):
        metrics = store.read_json(f"{rel}/{METRICS_FILE}")["metrics"]
        return Imported(dom.name, sid, cell, name, snap.id, n_papers, metrics, already=True)

    x_train, x_eval = load_snapshot(store, snap)
    run = RunInfo(embedder=name, data_snapshot=snap.id, domain=dom.name, code_version=IMPORTED)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / cell
        metrics = write_cell(model, local, run, x_train, x_eval)
        names = sorted(p.name for p in local.iterdir() if p.name != METRICS_FILE)
        rec = ImportRecord(sid, dom.name, dom.slug, snap.id, name, folder.resolve())
        ref = CellRef(cell, model.k, model.n_latents, model.d_in, rel, metrics, 0, 0.0)
        try:
            for file in [*names, METRICS_FILE]:
                store.write_bytes(f"{rel}/{file}", (local / file).read_bytes())
            record_import(client, settings, store, rec, ref, cfg)
        except BaseException:
            _undo(store, client, rel, [*names, METRICS_FILE], dom.name, sid)
            raise
    return Imported(dom.name, sid, cell, name, snap.id, n_papers, metrics, already=False)


def import_id(model: TopKSAE, domain: str, embedder: str, snapshot: str) -> str:
    """``import-{12 hex}``: the same SAE, domain, embedder and papers, the same id."""
    digest = hashlib.sha256()
    for t in (model.W_enc, model.b_lat, model.W_dec, model.b_pre):
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([model.k, domain, embedder, snapshot]).encode())
    return f"{IMPORT_PREFIX}{digest.hexdigest()[:12]}"


def _embedder(folder: Path, own: dict[str, Any], spec: str) -> tuple[str, str]:
    """(spec, storage name); EmbedderError for an unknown spec."""
    name = embedder_name(spec)
    made_with = own.get("embedder")
    if made_with and made_with != name:
        raise InteropInputError(
            f"{folder} was exported from {made_with} embeddings, not {name} ({spec!r}); "
            f"import it with --embedder {own.get('embedder_spec') or made_with}"
        )
    return spec, name


def _check_dimension(
    store: Store, folder: Path, dom: Domain, spec: str, name: str, d_in: int
) -> None:
    ns = Namespace(store, name)
    recorded = ns.recorded()
    if recorded is None:
        raise InteropInputError(
            f"no paper is embedded with {spec!r} in {store.uri('')}; run "
            f"`sae embed {dom.name} --embedder {spec}` first"
        )
    if recorded.get("dim") != d_in:
        raise InteropInputError(
            f"{folder}: the SAE's d_in is {d_in}, but {spec!r} gives {recorded.get('dim')}-d "
            f"vectors ({store.uri(ns.folder)}/_embedder.json); import it with the embedder "
            "it was trained on (--embedder)"
        )


def _snapshot(store: Store, dom: Domain, spec: str, name: str, recorded: Any) -> Snapshot:
    """The recorded snapshot when the store holds it, else the domain's now: refused
    before it is written when too few papers are embedded to measure the SAE on."""
    slug = re.escape(dom.slug)
    if isinstance(recorded, str) and re.fullmatch(rf"{slug}-[0-9a-f]{{12}}", recorded):
        snap = snapshot_by_id(store, dom, name, recorded)
        if snap is not None:
            return snap
    rows = snapshot_rows(embedded_in(store, dom, name), None)
    n_eval = int(rows["eval"].sum())
    if rows.height - n_eval < _MIN_TRAIN or n_eval < _MIN_EVAL:
        raise InteropInputError(
            f"{dom.name} has {rows.height - n_eval} training and {n_eval} held-out papers "
            f"embedded with {spec!r}; an import measures the SAE on at least {_MIN_TRAIN} "
            f"and {_MIN_EVAL}: run `sae embed {dom.name} --embedder {spec}`"
        )
    return fix_snapshot(store, dom, name)


def _recorded(client, domain: str, sweep_id: str, cell: str) -> bool:
    """Whether MLflow holds the import complete (its cell run finished)."""
    try:
        info = find_sweep(client, domain, sweep_id)
    except FeaturesInputError:
        return False
    return any(c.cell == cell for c in info.cells)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _undo(store: Store, client, rel: str, names: list[str], domain: str, sweep_id: str) -> None:
    """Removes what a failed import wrote; a failure to remove is logged, and the
    import's own error is the one raised."""
    try:
        for name in names:
            store.delete(f"{rel}/{name}")
        forget_import(store, client, domain, sweep_id)
    except Exception as exc:
        log.warning("could not remove the half-made import %s: %s", sweep_id, exc)
