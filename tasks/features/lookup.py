"""A cell's stored ``features.json``, found from a domain (its champion) or a cell name."""

from __future__ import annotations

import json

from infra.settings import get_settings
from infra.tracking import mlflow_client
from sae.config import parse_cell_name
from tasks.corpus.domains import UnknownDomainError, get_domain
from tasks.features.locate import FeaturesInputError, find_sweep
from tasks.features.run import DOC_FILE
from tasks.layout import open_store


def load_document(cell_or_domain: str, sweep_id: str | None = None) -> dict:
    settings = get_settings()
    try:
        domain, cell = get_domain(cell_or_domain).name, None
    except UnknownDomainError:
        try:
            domain = get_domain(parse_cell_name(cell_or_domain)[0]).name
        except (ValueError, UnknownDomainError) as exc:
            raise FeaturesInputError(
                f"{cell_or_domain!r} is neither a domain nor a cell name (csLG_64_3072_1024)"
            ) from exc
        cell = cell_or_domain
    info = find_sweep(mlflow_client(settings), domain, sweep_id)
    chosen = info.cell(cell) if cell else info.champion
    if chosen is None:
        raise FeaturesInputError(f"sweep {info.sweep_id} of {domain} has no champion")
    rel = f"{chosen.folder(info.sweep_id)}/features/{DOC_FILE}"
    store = open_store(settings)
    try:
        return json.loads(store.read_bytes(rel))
    except FileNotFoundError:
        raise FeaturesInputError(
            f"{chosen.cell} of sweep {info.sweep_id} has no features yet; run "
            f"`sae features {domain} --sweep {info.sweep_id} --cells {chosen.cell}`"
        ) from None
