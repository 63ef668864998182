"""Corpus parts, the quarantine and the harvest watermark, laid out under the store root.

    corpus/{slug}/part-*.parquet              validated papers (PAPER_SCHEMA)
    corpus/{slug}/_quarantine/part-*.parquet  rejected records and why (QUARANTINE_SCHEMA)
    watermarks/{slug}.json                    the newest paper already harvested

Parts are only ever added. A paper that comes back in a newer version lands in a new
part; readers keep the newest version of each id (then the latest part).
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


def corpus_dir(domain: Domain) -> str:
    return f"corpus/{domain.slug}"


def quarantine_dir(domain: Domain) -> str:
    return f"corpus/{domain.slug}/_quarantine"


def _part_name(df: pl.DataFrame, key_column: str) -> str:
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
    return store.write_parquet(f"{folder}/{_part_name(df, key)}", df)


def write_papers(store: Store, domain: Domain, papers: pl.DataFrame) -> str | None:
    """Adds one part; returns its URI, or None when there is nothing to write."""
    return _write_part(store, corpus_dir(domain), papers, PAPER_SCHEMA, "id")


def write_quarantine(store: Store, domain: Domain, rejected: pl.DataFrame) -> str | None:
    return _write_part(store, quarantine_dir(domain), rejected, QUARANTINE_SCHEMA, "raw")


def _read_parts(store: Store, folder: str, schema: dict) -> pl.DataFrame:
    parts = store.list(folder)
    if not parts:
        return pl.DataFrame(schema=schema)
    frames = [
        store.read_parquet(p).with_columns(pl.lit(i, pl.Int32).alias("_part"))
        for i, p in enumerate(parts)
    ]
    return pl.concat(frames, how="vertical_relaxed")


def read_papers(store: Store, domain: Domain) -> pl.DataFrame:
    """Every paper of the domain once: its newest version, sorted by id."""
    df = _read_parts(store, corpus_dir(domain), PAPER_SCHEMA)
    if "_part" not in df.columns:
        return df
    return (
        df.sort(["id", "version", "_part"])
        .unique(subset="id", keep="last", maintain_order=True)
        .drop("_part")
    )


def known_versions(store: Store, domain: Domain) -> dict[str, int]:
    df = read_papers(store, domain)
    return dict(zip(df["id"].to_list(), df["version"].to_list(), strict=True))


def read_quarantine(store: Store, domain: Domain) -> pl.DataFrame:
    df = _read_parts(store, quarantine_dir(domain), QUARANTINE_SCHEMA)
    return df.drop("_part") if "_part" in df.columns else df


class WatermarkError(ValueError):
    """The watermark file exists but cannot be trusted; the message says how to fix it."""


@dataclass(frozen=True)
class Watermark:
    """The newest ``published`` date among papers harvested so far, and when it was set."""

    domain: str
    newest: date
    updated_at: str


def watermark_path(domain: Domain) -> str:
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
