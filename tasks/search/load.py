"""A :class:`SearchEngine` for a domain's sweep, built from what the sweep left: the cell's
model, the papers of its data snapshot with their embeddings and titles, the embedder
that made them (to embed the query the same way), and ``features.json`` when
``sae features`` has run on the cell.

The sweep and its cells come from the sweep's index in the store
(:mod:`tasks.sweep.catalog`), else from MLflow (a sweep made before the index; the
domain's newest is then indexed for the next search). MLflow's import and queries were
2-6 s of a cold ``sae search``; torch and the embedder are what is left.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch

from infra.settings import Settings, get_settings
from infra.store import Store, StoreError
from infra.tracking import mlflow_client
from tasks.corpus.domains import UnknownDomainError, get_domain
from tasks.corpus.storage import papers_in_order
from tasks.embed.embedders import make_query_embedder
from tasks.embed.manifest import EmbeddingStoreError, Namespace
from tasks.embed.snapshot import Snapshot, snapshot_by_id
from tasks.features.locate import FeaturesInputError, SweepInfo, find_sweep
from tasks.features.schema import DOC_FILE
from tasks.layout import open_store
from tasks.search.ann import EXACT_BELOW, AnnIndex, fingerprint, index_path, open_index
from tasks.search.engine import SearchEngine
from tasks.search.limits import SearchInputError
from tasks.sweep.catalog import read_index, save_index
from tasks.sweep.load import load_cell_model
from tasks.sweep.track import CHAMPION

log = logging.getLogger(__name__)


def open_engine(
    domain: str,
    model: str = CHAMPION,
    sweep_id: str | None = None,
    settings: Settings | None = None,
    load_embedder: bool = False,
) -> SearchEngine:
    """``model``: ``champion`` or a cell name of the sweep (default: the newest finished).
    ``load_embedder``: load the query's embedder now rather than at the first query (a
    server's engine, so that its first search does not wait for it). The engine's
    ``build_seconds`` say where its build went."""
    clock = _Clock()
    settings = settings or get_settings()
    try:
        dom = get_domain(domain)
    except UnknownDomainError as exc:
        raise SearchInputError(str(exc), 404) from None
    store = open_store(settings)
    info, source = _find_sweep(settings, store, dom.name, sweep_id or None)
    try:
        cell = info.champion if model == CHAMPION else info.cell(model)
    except FeaturesInputError as exc:
        raise SearchInputError(str(exc), 404) from None
    if cell is None:
        raise SearchInputError(f"sweep {info.sweep_id} of {dom.name} has no champion", 404)
    clock.lap(f"sweep lookup ({source})")
    ids, titles, x, spec, snap = _corpus(store, dom, info)
    clock.lap("papers: embeddings and titles")
    index = _search_index(store, snap, ids, x)
    clock.lap("search index")
    folder = cell.folder(info.sweep_id)
    try:
        document = store.read_json(f"{folder}/features/{DOC_FILE}")
    except FileNotFoundError:
        document = None
    clock.lap("features.json")
    sae = load_cell_model(store, folder)
    clock.lap("model")
    engine = SearchEngine(
        sae, ids, titles, x, _embedder(spec), document, cell.cell, dom.name, info.sweep_id, index
    )
    clock.lap("engine (feature units, labels)")
    if load_embedder:
        _shared_embedder(spec)
        clock.lap("query embedder")
    engine.build_seconds = clock.laps
    log.info(
        "%s: search over %d papers with %s ready in %.1f s",
        dom.name,
        len(ids),
        cell.cell,
        sum(clock.laps.values()),
    )
    return engine


def swept_domains(settings: Settings) -> list[str]:
    """The domains with an experiment in MLflow (``arxiv-sae/{domain}``), for the page's
    menu; cs.LG when there is none yet."""
    client = mlflow_client(settings)
    found = []
    for experiment in client.search_experiments(filter_string="name LIKE 'arxiv-sae/%'"):
        try:
            found.append(get_domain(experiment.name.removeprefix("arxiv-sae/")).name)
        except UnknownDomainError:
            continue  # a name from another taxonomy, or made by hand
    return sorted(set(found)) or ["cs.LG"]


def sweep_models(domain: str, settings: Settings | None = None) -> dict:
    """What the page's menus offer for ``domain``: its newest finished sweep and cells."""
    settings = settings or get_settings()
    try:
        name = get_domain(domain).name
    except UnknownDomainError as exc:
        raise SearchInputError(str(exc), 404) from None
    info, _ = _find_sweep(settings, open_store(settings), name, None)
    champion = info.champion.cell if info.champion else None
    cells = sorted((c for c in info.cells), key=lambda c: (c.k, c.n_latents, c.n_axis))
    return {
        "sweep": info.sweep_id,
        "champion": champion,
        "models": [CHAMPION] * (champion is not None) + [c.cell for c in cells],
    }


def _find_sweep(
    settings: Settings, store: Store, domain: str, sweep_id: str | None
) -> tuple[SweepInfo, str]:
    """The sweep and where it was found: the store's index, else MLflow."""
    info = read_index(store, domain, sweep_id)
    if info is not None:
        return info, "store index"
    client = mlflow_client(settings)
    try:
        info = find_sweep(client, domain, sweep_id)
    except FeaturesInputError as exc:
        raise SearchInputError(str(exc), 404) from None
    # Only the newest finished: an index of an older sweep would hide a newer one that
    # has none from the next default lookup.
    if sweep_id is None:
        try:
            save_index(store, client, info)
        except StoreError as exc:  # a read-only store (search on S3): MLflow each time
            log.debug("sweep index not written (%s)", exc)
    return info, "MLflow"


class _Clock:
    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


#: Papers (ids, titles, embeddings [N, d], embedder spec, snapshot) by snapshot: a snapshot
#: never changes, and the cells of a sweep share one (at 300k x 384, 440 MB each).
_CORPORA: dict[str, tuple] = {}
#: The approximate indexes of those past EXACT_BELOW papers, by snapshot.
_INDEXES: dict[str, AnnIndex] = {}
_CORPORA_KEPT = 4
_EMBEDDERS: dict[str, object] = {}
_lock = threading.Lock()


def _corpus(store: Store, dom, info) -> tuple[list[str], list[str], torch.Tensor, str, Snapshot]:
    snap = snapshot_by_id(store, dom, info.embedder, info.data_snapshot)
    if snap is None:
        raise SearchInputError(
            f"{dom.name} has no embeddings for sweep {info.sweep_id} (snapshot "
            f"{info.data_snapshot} of {info.embedder} is not in {store.uri('')}); run "
            f"`sae embed {dom.name}` and a new sweep",
            404,
        )
    with _lock:
        if snap.uri not in _CORPORA:
            ns = Namespace(store, info.embedder)
            try:
                ids, x = ns.load(keys=store.read_parquet(snap.path))
            except EmbeddingStoreError as exc:
                raise SearchInputError(str(exc), 404) from None
            titles = _titles(store, ids)
            spec = ns.recorded()["spec"]
            if len(_CORPORA) >= _CORPORA_KEPT:
                _INDEXES.pop(_CORPORA.pop(next(iter(_CORPORA)))[4].uri, None)
            vectors = torch.from_numpy(np.require(x, requirements="W"))
            _CORPORA[snap.uri] = (ids, titles, vectors, spec, snap)
        return _CORPORA[snap.uri]


def _search_index(
    store: Store, snap: Snapshot, ids: list[str], x_ND: torch.Tensor, exact_below: int = EXACT_BELOW
) -> AnnIndex | None:
    """The snapshot's approximate index, read from beside it in the store, else built
    (minutes at millions of papers) and written there for the next process; None below
    ``exact_below`` papers, which are searched exactly."""
    if len(ids) < exact_below:
        return None
    with _lock:
        if snap.uri not in _INDEXES:
            fp = fingerprint(snap.id, ids)
            _INDEXES[snap.uri] = open_index(store, index_path(snap.path), x_ND, fp)
        return _INDEXES[snap.uri]


def _titles(store: Store, ids: list[str]) -> list[str]:
    """Titles of ``ids`` in their order ("" for a paper gone from the corpus since)."""
    return papers_in_order(store, ids, ["title"])["title"].fill_null("").to_list()


def _embedder(spec: str):
    """The query side of ``spec``, built on first use (loading a model takes seconds)."""

    def embed(texts: list[str]):
        return _shared_embedder(spec).embed(texts)

    return embed


def _shared_embedder(spec: str):
    """The embedder of ``spec`` that every engine of this process shares; a
    SearchInputError naming the spec when it cannot run here (imported vectors of an API
    without its key, a local model that is not installed)."""
    from tasks.embed.embedders import EmbedderError

    with _lock:
        if spec not in _EMBEDDERS:
            try:
                _EMBEDDERS[spec] = make_query_embedder(spec)
            except (EmbedderError, OSError, ImportError) as exc:
                raise SearchInputError(
                    f"the query must be embedded by the embedder that made the papers' "
                    f"vectors, {spec!r} (for imported vectors, the --embedder given to `sae "
                    f"import-vectors`), and it cannot run here: {exc}",
                    503,
                ) from exc
        return _EMBEDDERS[spec]
