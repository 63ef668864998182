"""Records in (a file, a dump, a harvest), validated papers and quarantine parts out."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from infra.progress import StageProgress
from infra.store import Store
from tasks.corpus.domains import Domain
from tasks.corpus.records import RawRecord
from tasks.corpus.storage import (
    known_versions,
    read_watermark,
    write_papers,
    write_quarantine,
    write_watermark,
)

log = logging.getLogger(__name__)

#: Days before the watermark that a harvest looks at again: arXiv announces some papers
#: days after submission (holds, moderation), and a repeat is only a duplicate.
HARVEST_OVERLAP_DAYS = 2


@dataclass
class IngestReport:
    domain: str
    source: str
    counts: dict[str, int]
    papers_uri: str | None = None
    quarantine_uri: str | None = None
    newest: date | None = None
    #: Problems with the input itself (a truncated file): the run kept what it could read.
    input_errors: list[str] = field(default_factory=list)
    watermark: date | None = None

    def summary(self) -> str:
        c = self.counts
        text = (
            f"{self.domain}: {c.get('accepted', 0)} accepted, {c.get('duplicate', 0)} duplicate, "
            f"{c.get('rejected', 0)} rejected, {c.get('other_domain', 0)} in other domains "
            f"(of {c.get('read', 0)} read)"
        )
        if self.quarantine_uri:
            text += f"\n  rejected records and reasons: {self.quarantine_uri}"
        if self.papers_uri:
            text += f"\n  papers: {self.papers_uri}"
        return text


def ingest_records(
    store: Store, domain: Domain, records: Iterable[RawRecord], source: str
) -> IngestReport:
    from tasks.corpus.validate import validate

    result = validate(records, domain, known=known_versions(store))
    # Papers first: if the run dies before the quarantine is written, a rerun finds the
    # papers as duplicates and writes the quarantine then; nothing is counted twice.
    papers_uri = write_papers(store, result.papers)
    quarantine_uri = write_quarantine(store, result.quarantine)
    # Readers report problems with the input as a whole (a cut stream, an error feed)
    # at these locations rather than at a record's.
    whole = result.quarantine.filter(result.quarantine["location"].is_in(["end of input", "feed"]))
    input_errors = whole["reason"].to_list()
    newest = result.papers["published"].max() if result.papers.height else None
    report = IngestReport(
        domain=domain.name,
        source=source,
        counts=dict(result.counts),
        papers_uri=papers_uri,
        quarantine_uri=quarantine_uri,
        newest=newest,
        input_errors=input_errors,
    )
    return report


def ingest_source(
    store: Store,
    domain: Domain,
    source: str | Path,
    fmt: str | None = None,
    limit: int | None = None,
) -> IngestReport:
    """Reads a file or folder in any known format; raises SourceError if it is unreadable."""
    from tasks.corpus.readers import read_source

    store.check_writable()
    return ingest_records(store, domain, read_source(source, fmt, limit=limit), str(source))


def harvest_window(
    store: Store,
    domain: Domain,
    since: date | None,
    until: date | None,
    *,
    today: date | None = None,
) -> tuple[date, date]:
    """The dates to ask for: from the watermark (less an overlap) unless ``since`` is given."""
    today = today or datetime.now(UTC).date()
    until = until or today
    if since is None:
        mark = read_watermark(store, domain, today=today)
        overlap = timedelta(days=HARVEST_OVERLAP_DAYS)
        since = (mark.newest - overlap) if mark else until - timedelta(days=7)
    if since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    return since, until


def harvest(
    store: Store,
    domain: Domain,
    *,
    since: date | None,
    until: date | None,
    source: str,
    config,
    limit: int | None = None,
    move_watermark: bool = True,
    stats=None,
) -> IngestReport:
    """Harvests arXiv (``api`` or ``oai``) into the corpus; moves the watermark if asked.

    The re-embed flow passes ``move_watermark=False`` and moves it itself once the new
    papers' embeddings are written.
    """
    from tasks.corpus import harvest as harvesters

    since, until = harvest_window(store, domain, since, until)
    store.check_writable()
    fn = {"api": harvesters.harvest_api, "oai": harvesters.harvest_oai}.get(source)
    if fn is None:
        raise ValueError(f"unknown harvest source {source!r}; use 'api' or 'oai'")
    stats = stats if stats is not None else harvesters.HarvestStats()
    failure: list[Exception] = []

    def records():
        # Keep what arrived before a failure: it is validated and stored, the watermark
        # stays put, and the error is raised after that, so a rerun only repeats the tail.
        with StageProgress(f"harvest {domain.name}", unit="records") as shown:
            try:
                for n, record in enumerate(
                    fn(domain, since, until, config=config, stats=stats, limit=limit), 1
                ):
                    # The API announces its total; OAI-PMH says none until the end.
                    total = min(filter(None, (stats.total_results, limit)), default=None)
                    shown.update(n, total, requests=stats.requests)
                    yield record
            except harvesters.HarvestError as exc:
                failure.append(exc)

    report = ingest_records(store, domain, records(), f"arXiv {source} {since}..{until}")
    if failure:
        raise failure[0]
    if move_watermark and report.newest is not None:
        report.watermark = write_watermark(store, domain, report.newest).newest
    return report
