"""Raw records in, a clean paper table and a quarantine table out.

Every record read ends up in exactly one place: ``papers`` (accepted), ``quarantine``
(rejected, with a reason), or one of two counts that need no review: ``duplicate`` (an
older or already stored copy of a paper that is kept) and ``other_domain`` (a valid
paper of another field, which is most of the Kaggle snapshot).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from tasks.corpus.domains import Domain
from tasks.corpus.records import PAPER_SCHEMA, QUARANTINE_SCHEMA, RAW_CHARS, RawRecord
from tasks.corpus.text import (
    category_codes,
    clean_text,
    date_from_id,
    id_version,
    is_undecodable,
    is_withdrawn,
    normalise_id,
    parse_date,
)

COUNT_KEYS = ("read", "accepted", "duplicate", "rejected", "other_domain")

#: Listing dates run a day or two ahead of UTC submission dates; more than this is an error.
FUTURE_SLACK = timedelta(days=2)


@dataclass(frozen=True)
class ValidationConfig:
    min_title_chars: int = 5
    """Shortest title kept, counted after whitespace is collapsed."""
    min_abstract_chars: int = 100
    """Shortest abstract kept; shorter ones are rarely more than a placeholder."""

    def __post_init__(self) -> None:
        for name in ("min_title_chars", "min_abstract_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ValidationResult:
    papers: pl.DataFrame
    """PAPER_SCHEMA, one row per id (its newest version), sorted by id."""
    quarantine: pl.DataFrame
    """QUARANTINE_SCHEMA, one row per rejected record, with its reason."""
    counts: dict[str, int]
    """read, accepted, duplicate, rejected, other_domain; read is the sum of the others."""


class _RejectedError(Exception):
    """A record that goes to quarantine, with the reason a reviewer reads."""

    def __init__(self, reason: str, arxiv_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.arxiv_id = arxiv_id


class _OtherDomainError(Exception):
    """A valid record of another field: counted, neither kept nor quarantined."""


def validate(
    records: Iterable[RawRecord],
    domain: Domain,
    *,
    known: Mapping[str, int] | None = None,
    config: ValidationConfig = ValidationConfig(),
    today: date | None = None,
) -> ValidationResult:
    """Check, clean and de-duplicate ``records`` for ``domain``.

    ``known`` maps ids already stored to their stored version: those records come back
    only when they are newer. ``today`` (UTC by default) bounds the publication dates.
    """
    today = today or datetime.now(UTC).date()
    known = known or {}
    counts = dict.fromkeys(COUNT_KEYS, 0)
    kept: dict[str, dict[str, Any]] = {}
    text_owner: dict[bytes, str] = {}
    quarantine: list[dict[str, Any]] = []
    for record in records:
        counts["read"] += 1
        try:
            paper = _check(record, domain, config, today)
        except _OtherDomainError:
            counts["other_domain"] += 1
            continue
        except _RejectedError as rejection:
            quarantine.append(_quarantine_row(record, rejection.reason, rejection.arxiv_id))
            continue
        # Streaming, so the first id to show a text owns it, even if a newer version
        # of that paper changes the text later.
        owner = text_owner.setdefault(_text_key(paper), paper["id"])
        if owner != paper["id"]:
            reason = f"same title and abstract as {owner}"
            quarantine.append(_quarantine_row(record, reason, paper["id"]))
        elif paper["version"] <= known.get(paper["id"], 0) or _keep_newest(kept, paper):
            counts["duplicate"] += 1
    return _result(kept, quarantine, counts)


def _keep_newest(kept: dict[str, dict[str, Any]], paper: dict[str, Any]) -> bool:
    """Keep the newest copy of each id (a later tie wins); True when a copy was dropped."""
    old = kept.get(paper["id"])
    if old is None or old["version"] <= paper["version"]:
        kept[paper["id"]] = paper
    return old is not None


def _result(
    kept: dict[str, dict[str, Any]], quarantine: list[dict[str, Any]], counts: dict[str, int]
) -> ValidationResult:
    papers = pl.DataFrame([kept[k] for k in sorted(kept)], schema=PAPER_SCHEMA, orient="row")
    counts["accepted"] = len(kept)
    counts["rejected"] = len(quarantine)
    return ValidationResult(
        papers=papers,
        quarantine=pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA, orient="row"),
        counts={k: counts[k] for k in COUNT_KEYS},
    )


def _quarantine_row(record: RawRecord, reason: str, arxiv_id: str | None) -> dict[str, Any]:
    return {
        "id": arxiv_id,
        "reason": reason,
        "source": record.source,
        "location": record.location,
        "raw": record.raw[:RAW_CHARS],
    }


def _text_key(paper: dict[str, Any]) -> bytes:
    # A digest, not the text: the map lives as long as the run, over millions of records.
    text = f"{paper['title']}\n{paper['abstract']}".casefold()
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


# ---- one record -------------------------------------------------------------------------


def _check(
    record: RawRecord, domain: Domain, config: ValidationConfig, today: date
) -> dict[str, Any]:
    """The paper row for ``record``; raises _RejectedError or _OtherDomainError."""
    fields = record.fields
    if fields is None:
        raise _RejectedError(record.error or "unreadable record")
    arxiv_id = _check_id(fields.get("id"))
    try:
        if fields.get("deleted") is True:
            raise _RejectedError("deleted record")
        categories = _check_categories(fields.get("categories"), domain)
        if not domain.contains(categories):
            raise _OtherDomainError
        return {
            "id": arxiv_id,
            "version": _check_version(fields),
            "title": _check_title(fields.get("title"), config),
            "abstract": _check_abstract(fields.get("abstract"), config),
            "categories": categories,
            "published": _check_published(fields.get("published"), arxiv_id, today),
            "source": record.source,
        }
    except _RejectedError as rejection:
        raise _RejectedError(rejection.reason, arxiv_id) from None


def _check_id(value: Any) -> str:
    if value is None:
        raise _RejectedError("id missing")
    if not isinstance(value, str):
        raise _RejectedError(f"id is not a string (got {_type(value)}: {value!r})")
    try:
        return normalise_id(value)
    except ValueError as err:
        raise _RejectedError(f"id {err}", value) from None


def _check_version(fields: Mapping[str, Any]) -> int:
    version = fields.get("version")
    if version is None:
        return id_version(fields["id"]) or 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _RejectedError(f"version is not a positive integer (got {version!r})")
    return version


def _check_categories(value: Any, domain: Domain) -> list[str]:
    if value is None:
        # The Hugging Face sets have no categories: everything in them is the domain's.
        if domain.default_categories is None:
            raise _RejectedError(
                f"no categories, and {domain.name} is not one category or archive to file "
                "the paper under (ingest it under its own field)"
            )
        return list(domain.default_categories)
    if isinstance(value, str):
        tokens = value.split()
    elif isinstance(value, list) and all(isinstance(t, str) for t in value):
        tokens = value
    else:
        raise _RejectedError(
            f"categories is not a list of strings or a space-separated string "
            f"(got {_type(value)}: {value!r})"
        )
    codes = category_codes(tokens)
    if not codes:
        raise _RejectedError(f"no arXiv category codes in categories {value!r}")
    return codes


def _check_title(value: Any, config: ValidationConfig) -> str:
    # The astro-ph Hugging Face set stores titles ADS-style, as a list.
    if isinstance(value, list) and value:
        value = value[0]
    return _check_text("title", value, config.min_title_chars)


def _check_abstract(value: Any, config: ValidationConfig) -> str:
    abstract = _check_text("abstract", value, 1)
    # Before the length check: "Withdrawn." is short for a reason worth naming.
    if is_withdrawn(abstract):
        raise _RejectedError("withdrawn")
    if len(abstract) < config.min_abstract_chars:
        raise _RejectedError(_too_short("abstract", abstract, config.min_abstract_chars))
    return abstract


def _check_text(name: str, value: Any, min_chars: int) -> str:
    if value is None or value == []:
        raise _RejectedError(f"{name} missing")
    if not isinstance(value, str):
        raise _RejectedError(f"{name} is not a string (got {_type(value)}: {value!r:.80})")
    if is_undecodable(value):
        raise _RejectedError(f"undecodable text in {name}")
    text = clean_text(value)
    if not text:
        raise _RejectedError(f"{name} empty after cleaning")
    if len(text) < min_chars:
        raise _RejectedError(_too_short(name, text, min_chars))
    return text


def _too_short(name: str, text: str, min_chars: int) -> str:
    return f"{name} too short ({len(text)} chars, minimum {min_chars})"


def _check_published(value: Any, arxiv_id: str, today: date) -> date:
    if value is None:
        return date_from_id(arxiv_id)
    try:
        published = parse_date(value)
    except ValueError:
        raise _RejectedError(f"malformed published date {value!r:.80}") from None
    if published > today + FUTURE_SLACK:
        raise _RejectedError(f"date in the future: {published} (today is {today})")
    return published


def _type(value: Any) -> str:
    return type(value).__name__
