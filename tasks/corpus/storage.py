"""The corpus, its quarantine and the harvest watermarks, laid out under the store root.

    corpus/part-*.parquet              every validated paper once (PAPER_SCHEMA), whatever
                                       the fields it is listed in
    corpus/_quarantine/part-*.parquet  rejected records and why (QUARANTINE_SCHEMA)
    watermarks/{slug}.json             per harvest query: the newest paper harvested

A domain is a view over the one corpus: the papers whose newest version carries one of
its categories. Parts are only ever added. A paper that comes back in a newer version
lands in a new part; readers keep the newest version of each id (then the latest part),
so a paper whose categories change moves from one view to another and is never in two
copies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from infra.store import Store
from tasks.corpus.domains import Domain
from tasks.corpus.records import PAPER_SCHEMA, QUARANTINE_SCHEMA

CORPUS_DIR = "corpus"
_KEYS = ("id", "version", "categories")
QUARANTINE_DIR = "corpus/_quarantine"


def part_name(df: pl.DataFrame, key_column: str) -> str:
    # Time first so names sort in write order; content hash so two writers never collide.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    digest = hashlib.sha256(
        "\n".join(df.get_column(key_column).cast(pl.String).fill_null("")).encode()
    ).hexdigest()[:12]
    return f"part-{stamp}-{digest}.parquet"


def _write_part(store: Store, folder: str, df: pl.DataFrame, schema: dict, key: str) -> str | None:
    if df.is_empty():
        return None
    df = df.select(list(schema)).cast(schema)
    return store.write_parquet(f"{folder}/{part_name(df, key)}", df)


def write_papers(store: Store, papers: pl.DataFrame) -> str | None:
    """Adds one part; returns its URI, or None when there is nothing to write."""
    return _write_part(store, CORPUS_DIR, papers, PAPER_SCHEMA, "id")


def write_quarantine(
    store: Store, rejected: pl.DataFrame, folder: str = QUARANTINE_DIR
) -> str | None:
    """Adds one part of rejected records (the corpus's, or ``folder``'s: imported vectors
    keep theirs beside them); None when there is nothing to write."""
    return _write_part(store, folder, rejected, QUARANTINE_SCHEMA, "raw")


def newest_versions(store: Store, parts: list[str] | None = None) -> pl.DataFrame:
    """[id, version, categories, _part]: the newest copy of every paper, sorted by id;
    ``_part`` indexes ``parts`` (default: the corpus's parts as listed now).

    Reads three narrow columns of each part, so deciding which copy counts costs a small
    share of the corpus's bytes in memory, never its texts.
    """
    parts = store.list(CORPUS_DIR) if parts is None else parts
    frames = [
        store.read_parquet(p, columns=list(_KEYS)).with_columns(pl.lit(i, pl.Int32).alias("_part"))
        for i, p in enumerate(parts)
    ]
    if not frames:
        return pl.DataFrame(schema={**{c: PAPER_SCHEMA[c] for c in _KEYS}, "_part": pl.Int32})
    return (
        pl.concat(frames, how="vertical_relaxed")
        .sort(["id", "version", "_part"])
        .unique(subset="id", keep="last", maintain_order=True)
    )


def in_domain(keys: pl.DataFrame, domain: Domain) -> pl.DataFrame:
    """The rows of ``keys`` (with a ``categories`` column) whose paper belongs to ``domain``.

    Asked once per distinct list of categories: far fewer than papers (cross-lists repeat).
    """
    if domain.kind == "all":
        return keys
    lists = keys.select(pl.col("categories").unique())["categories"]
    member = pl.DataFrame(
        {"categories": lists, "_in": [domain.contains(c) for c in lists.to_list()]},
        schema={"categories": lists.dtype, "_in": pl.Boolean},
    )
    return keys.join(member, on="categories", how="left").filter("_in").drop("_in")


def count_papers(store: Store, domains: list[Domain]) -> dict[str, int]:
    """Each domain's papers, from one read of the corpus's ids and categories."""
    keys = newest_versions(store)
    return {domain.name: in_domain(keys, domain).height for domain in domains}


def read_papers(store: Store, domain: Domain, columns: list[str] | None = None) -> pl.DataFrame:
    """Every paper of ``domain`` once: its newest version, sorted by id.

    ``columns`` (default: all of PAPER_SCHEMA) are read only for the domain's rows, one
    part at a time.
    """
    parts = store.list(CORPUS_DIR)
    return _read_newest(store, parts, in_domain(newest_versions(store, parts), domain), columns)


def papers_by_id(store: Store, ids: list[str], columns: list[str] | None = None) -> pl.DataFrame:
    """The newest version of each of ``ids`` found in the corpus, whatever its domain now
    (a snapshot's paper whose categories changed since still has its text), sorted by id."""
    parts = store.list(CORPUS_DIR)
    wanted = newest_versions(store, parts).join(pl.DataFrame({"id": ids}), on="id", how="semi")
    return _read_newest(store, parts, wanted, columns)


def papers_in_order(store: Store, ids: list[str], columns: list[str]) -> pl.DataFrame:
    """``columns`` of ``ids``, one row each in their order, nulls for an id the corpus no
    longer has (a snapshot's paper since withdrawn: its vector stays, its text is gone)."""
    papers = papers_by_id(store, ids, columns=list(dict.fromkeys(["id", *columns])))
    table = pl.DataFrame({"id": ids}).join(papers, on="id", how="left", maintain_order="left")
    return table.select(columns)


def _read_newest(
    store: Store, parts: list[str], wanted: pl.DataFrame, columns: list[str] | None
) -> pl.DataFrame:
    """``columns`` of the ``wanted`` [id, _part] rows, read one part at a time."""
    columns = columns or list(PAPER_SCHEMA)
    frames = []
    for (i,), keep in wanted.select("id", "_part").group_by("_part"):
        df = store.read_parquet(parts[i], columns=list(dict.fromkeys(["id", "version", *columns])))
        # A part may hold two versions of one id; the newest was chosen above.
        newest = df.sort("version").unique("id", keep="last")
        frames.append(newest.join(keep.select("id"), on="id", how="semi"))
    if not frames:
        return pl.DataFrame(schema={c: PAPER_SCHEMA[c] for c in columns})
    return pl.concat(frames, how="vertical_relaxed").select(columns).sort("id")


def known_versions(store: Store) -> dict[str, int]:
    """Every paper's newest version, whatever its domain: what a new record is compared to."""
    df = newest_versions(store)
    return dict(zip(df["id"].to_list(), df["version"].to_list(), strict=True))


def read_quarantine(store: Store) -> pl.DataFrame:
    frames = [store.read_parquet(p) for p in store.list(QUARANTINE_DIR)]
    if not frames:
        return pl.DataFrame(schema=QUARANTINE_SCHEMA)
    return pl.concat(frames, how="vertical_relaxed")


class WatermarkError(ValueError):
    """The watermark file exists but cannot be trusted; the message says how to fix it."""


@dataclass(frozen=True)
class Watermark:
    """The newest ``published`` date among papers harvested so far, and when it was set."""

    domain: str
    newest: date
    updated_at: str


def watermark_path(domain: Domain) -> str:
    """One watermark per harvest query: a domain, or the union harvested in one run."""
    return f"watermarks/{domain.slug}.json"


def read_watermark(store: Store, domain: Domain, *, today: date | None = None) -> Watermark | None:
    rel = watermark_path(domain)
    try:
        raw = store.read_bytes(rel)
    except FileNotFoundError:
        return None
    fix = f"fix or delete {store.uri(rel)}, or pass --since"
    try:
        obj = json.loads(raw)
        newest = date.fromisoformat(obj["newest"])
        mark = Watermark(domain=obj["domain"], newest=newest, updated_at=obj["updated_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WatermarkError(f"watermark {store.uri(rel)} is corrupt ({exc}); {fix}") from exc
    if mark.domain != domain.name:
        raise WatermarkError(f"watermark {store.uri(rel)} is for {mark.domain!r}; {fix}")
    today = today or datetime.now(UTC).date()
    if mark.newest > today + timedelta(days=1):
        raise WatermarkError(
            f"watermark {store.uri(rel)} is in the future ({mark.newest}, today is {today}); {fix}"
        )
    return mark


def write_watermark(store: Store, domain: Domain, newest: date) -> Watermark:
    """Moves the watermark forward only: an older date never overwrites a newer one.

    A corrupt watermark is replaced: the caller got past it with an explicit ``since``.
    """
    try:
        current = read_watermark(store, domain)
    except WatermarkError:
        current = None
    if current is not None and current.newest >= newest:
        return current
    mark = Watermark(domain.name, newest, datetime.now(UTC).isoformat(timespec="seconds"))
    store.write_json(
        watermark_path(domain),
        {"domain": mark.domain, "newest": mark.newest.isoformat(), "updated_at": mark.updated_at},
    )
    return mark
