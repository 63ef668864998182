"""``sae export``: a finished cell as a folder others load, with its model card.

``saelens``: cfg.json, sae_weights.safetensors and sparsity.safetensors in SAELens's
layout (:mod:`tasks.interop.saelens`); ``safetensors``: our checkpoint as the store
holds it (model.safetensors + cfg.json, what ``TopKSAE.load`` reads). Both with a
README.md (:mod:`tasks.interop.card`). The cell is found as ``sae feature`` finds one: a
cell name, or a domain for its champion, of the domain's newest finished sweep or
``sweep_id``. Everything is written to a hidden folder beside the destination and
renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.settings import Settings, get_settings
from infra.store import Store
from infra.tracking import mlflow_client
from sae.checkpoint import CFG_FILE, WEIGHTS_FILE
from sae.config import parse_cell_name
from sae.trainer import METRICS_FILE
from tasks.corpus.domains import UnknownDomainError, get_domain
from tasks.embed.manifest import Namespace
from tasks.embed.snapshot import snapshot_by_id
from tasks.features.locate import CellInfo, FeaturesInputError, SweepInfo, find_sweep
from tasks.interop import InteropInputError
from tasks.interop.card import CardFacts, hub_model, render_card
from tasks.interop.saelens import OWN_METADATA, write_saelens
from tasks.layout import open_store
from tasks.sweep.load import load_cell_model
from tasks.sweep.train import DENSITY_FILE, RETRIEVAL_FILE

FORMATS = ("saelens", "safetensors")
CARD_FILE = "README.md"


@dataclass(frozen=True)
class Exported:
    folder: Path
    domain: str
    sweep_id: str
    cell: str
    fmt: str
    files: tuple[str, ...]


def check_destination(dest: Path, force: bool) -> None:
    """A destination that is a file, or a non-empty folder without ``force``: refused."""
    if dest.exists() and not dest.is_dir():
        raise InteropInputError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise InteropInputError(f"{dest} is not empty; --force replaces what it holds")


def export_cell(
    cell_or_domain: str,
    dest: Path,
    fmt: str = "saelens",
    sweep_id: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> Exported:
    if fmt not in FORMATS:
        raise InteropInputError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    check_destination(dest, force)
    settings = settings or get_settings()
    domain, wanted = _resolve(cell_or_domain)
    info = find_sweep(mlflow_client(settings), domain, sweep_id)
    cell = info.cell(wanted) if wanted else info.champion
    if cell is None:
        raise FeaturesInputError(f"sweep {info.sweep_id} of {domain} has no champion")
    store = open_store(settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        _write(store, info, cell, fmt, staging)
        files = tuple(sorted(p.name for p in staging.iterdir()))
        _place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Exported(dest, info.domain, info.sweep_id, cell.cell, fmt, files)


def _resolve(cell_or_domain: str) -> tuple[str, str | None]:
    """(domain, cell name or None for the champion) of a domain or a cell name."""
    try:
        return get_domain(cell_or_domain).name, None
    except UnknownDomainError:
        pass
    try:
        return get_domain(parse_cell_name(cell_or_domain)[0]).name, cell_or_domain
    except (ValueError, UnknownDomainError):
        raise InteropInputError(
            f"{cell_or_domain!r} is neither a domain nor a cell name (csLG_64_3072_1024)"
        ) from None


def _write(store: Store, info: SweepInfo, cell: CellInfo, fmt: str, out: Path) -> None:
    folder = cell.folder(info.sweep_id)
    cfg = store.read_json(f"{folder}/{CFG_FILE}")
    model = load_cell_model(store, folder)
    facts = _facts(store, info, cell, fmt, cfg, model.cfg.k_encode)
    if fmt == "saelens":
        density = _optional(store, f"{folder}/{DENSITY_FILE}")
        write_saelens(
            model,
            out,
            {
                # SAELens's name for the model whose activations the SAE reads.
                "model_name": hub_model(facts.embedder_spec) or info.embedder,
                OWN_METADATA: _own_metadata(info, cell, facts),
            },
            None if density is None else np.load(io.BytesIO(density)),
        )
    else:
        for name in (CFG_FILE, WEIGHTS_FILE):
            (out / name).write_bytes(store.read_bytes(f"{folder}/{name}"))
    (out / CARD_FILE).write_text(render_card(facts))


def _facts(store: Store, info: SweepInfo, cell: CellInfo, fmt: str, cfg: dict, k: int):
    folder = cell.folder(info.sweep_id)
    metrics = dict(store.read_json(f"{folder}/{METRICS_FILE}")["metrics"])
    retrieval = _optional(store, f"{folder}/{RETRIEVAL_FILE}")
    if retrieval is not None:
        metrics.update(json.loads(retrieval))
    snap = snapshot_by_id(store, get_domain(info.domain), info.embedder, info.data_snapshot)
    recorded = Namespace(store, info.embedder).recorded() or {}
    return CardFacts(
        fmt=fmt,
        domain=info.domain,
        cell=cell.cell,
        sweep_id=info.sweep_id,
        d_in=cfg["sae"]["d_in"],
        n_latents=cell.n_latents,
        k=k,
        arch=cfg["sae"].get("arch", "topk"),
        metrics=metrics,
        data_snapshot=info.data_snapshot,
        n_train=None if snap is None else snap.n_train,
        n_eval=None if snap is None else snap.n_eval,
        embedder=info.embedder,
        embedder_spec=recorded.get("spec", ""),
        train=cfg.get("train"),
        code_version=cfg.get("run", {}).get("code_version", "unknown"),
    )


def _own_metadata(info: SweepInfo, cell: CellInfo, facts: CardFacts) -> dict:
    """Our block of the SAELens metadata: what an import back here needs (the embedder,
    the snapshot, the batch size in the cell's name) and where the cell came from."""
    return {
        "domain": info.domain,
        "cell": cell.cell,
        "sweep_id": info.sweep_id,
        "data_snapshot": info.data_snapshot,
        "embedder": info.embedder,
        "embedder_spec": facts.embedder_spec,
        "batch_size": parse_cell_name(cell.cell)[3],
        "code_version": facts.code_version,
        "text": 'title + "\\n\\n" + abstract',
    }


def _optional(store: Store, rel: str) -> bytes | None:
    try:
        return store.read_bytes(rel)
    except FileNotFoundError:
        return None


def _place(staging: Path, dest: Path) -> None:
    """Renames ``staging`` to ``dest``; an existing ``dest`` (forced) is moved aside first
    and removed once the new folder is in place."""
    if not dest.exists():
        os.replace(staging, dest)
        return
    aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old."))
    os.replace(dest, aside / dest.name)
    os.replace(staging, dest)
    shutil.rmtree(aside, ignore_errors=True)
