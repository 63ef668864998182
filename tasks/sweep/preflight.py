"""What a sweep can be refused for before any server, flow or task starts.

The flow checks the same things again where it meets them (a deployment run has no
CLI in front of it); checking them here first means bad input costs no Prefect server,
no task retries and no failed flow run, only one line saying what to fix.
"""

from __future__ import annotations

from infra.settings import Settings
from infra.store import Store
from sae.config import ConfigError
from sae.errors import DataError
from tasks.corpus.domains import Domain, UnknownDomainError, get_domain
from tasks.corpus.readers import SourceError, check_source
from tasks.corpus.storage import CORPUS_DIR, count_papers
from tasks.embed.embedders import EmbedderError, embedder_name
from tasks.embed.run import EmptyCorpusError
from tasks.embed.snapshot import snapshot_by_id
from tasks.sweep.config import SweepInputError, SweepParams

#: What the same input raises again: never retried, and ``sae`` exits 2 on it.
BAD_INPUT: tuple[type[Exception], ...] = (
    ConfigError, DataError, SweepInputError, SourceError, UnknownDomainError, EmbedderError,
    EmptyCorpusError,
)  # fmt: skip


def check_sweep_inputs(params: SweepParams, settings: Settings, store: Store) -> None:
    """Raises SourceError (the source cannot be read), EmbedderError (a bad embedder
    name) or SweepInputError (a domain with no papers, an unknown data snapshot)."""
    if params.source:
        check_source(params.source)
    embedder = embedder_name(params.embedder or settings.embedder)
    domains = [get_domain(name) for name in params.domains]
    counts = {} if params.source else count_papers(store, domains)
    for dom in domains:
        if counts.get(dom.name) == 0:
            raise no_papers(store, dom)
        pinned = params.data_snapshot
        if pinned and snapshot_by_id(store, dom, embedder, pinned) is None:
            raise unknown_snapshot(dom, embedder, pinned)


def no_papers(store: Store, domain: Domain) -> SweepInputError:
    return SweepInputError(
        f"no papers of {domain.name} under {store.uri(CORPUS_DIR)}: pass a source "
        f"(`sae sweep {domain.name} --source FILE`) or run `sae ingest {domain.name} FILE` first"
    )


def unknown_snapshot(domain: Domain, embedder: str, snap_id: str) -> SweepInputError:
    return SweepInputError(
        f"no data snapshot {snap_id!r} for {domain.name} and {embedder}: name one an earlier "
        "sweep of the domain used (its data_snapshot tag), or leave --data-snapshot out"
    )
