"""A sweep's index in the store, ``sae/{sweep_id}/sweep.json``: what MLflow records of it
(:class:`tasks.features.locate.SweepInfo`: domain, embedder, data snapshot, cells,
champion) and its parent run's status, so that ``sae search`` finds a domain's newest
finished sweep without MLflow, whose import and queries were 2-6 s of a cold search.

MLflow stays the record; the index is a copy of what it says, written by the sweep flow
once the parent run is closed (:func:`index_sweep`). Whatever else records a sweep in
MLflow should call it too, or a domain's index names an older sweep than MLflow's newest.
A reader that finds no index falls back to MLflow (sweeps made before the index existed)
and may leave one (:func:`save_index`) for the next reader.
"""

from __future__ import annotations

import dataclasses
import re

from infra.store import Store, StoreError
from tasks.features.locate import IMPORT_PREFIX, CellInfo, SweepInfo, find_sweep

INDEX_FILE = "sweep.json"
#: Bumped when the document changes; a reader skips other versions (MLflow answers them).
INDEX_VERSION = 1
FINISHED = "FINISHED"
_SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def index_path(sweep_id: str) -> str:
    return f"sae/{sweep_id}/{INDEX_FILE}"


def index_sweep(store: Store, client, domain: str, sweep_id: str) -> None:
    """Writes the index of ``sweep_id`` as MLflow now records it (call it after the
    parent run is closed: its status is part of the index)."""
    save_index(store, client, find_sweep(client, domain, sweep_id))


def save_index(store: Store, client, info: SweepInfo) -> None:
    status = client.get_run(info.parent_run_id).info.status
    doc = {"version": INDEX_VERSION, "status": status, **dataclasses.asdict(info)}
    store.write_json(index_path(info.sweep_id), doc)


def read_index(store: Store, domain: str, sweep_id: str | None = None) -> SweepInfo | None:
    """The indexed sweep ``sweep_id`` of ``domain`` (whatever its status, as MLflow's
    lookup), or the domain's newest finished one; None when the index has no answer."""
    if sweep_id is not None:
        if not _SWEEP_ID.fullmatch(sweep_id):
            return None
        doc = _read(store, index_path(sweep_id))
        return _info(doc) if doc is not None and doc["domain"] == domain else None
    found = []
    for path in store.list("sae", f"*/{INDEX_FILE}"):
        doc = _read(store, path)
        if doc is None or doc["sweep_id"].startswith(IMPORT_PREFIX):
            continue  # an import answers only to its own id
        if doc["domain"] == domain and doc["status"] == FINISHED:
            found.append(doc)
    if not found:
        return None
    return _info(max(found, key=lambda d: d["start_time"]))


def _read(store: Store, path: str) -> dict | None:
    try:
        doc = store.read_json(path)
    except (FileNotFoundError, StoreError, ValueError):  # none, or unreadable: ask MLflow
        return None
    return doc if isinstance(doc, dict) and doc.get("version") == INDEX_VERSION else None


def _info(doc: dict) -> SweepInfo:
    fields = {f.name for f in dataclasses.fields(SweepInfo)}
    values = {k: v for k, v in doc.items() if k in fields}
    values["cells"] = tuple(CellInfo(**c) for c in doc["cells"])
    return SweepInfo(**values)
