"""What every reader hands to validation, and the two table schemas it produces.

Readers know formats, validation knows rules: a reader maps its format's fields onto
the common keys below and never decides whether a paper is good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

#: Keys a reader may put in ``RawRecord.fields``; any other key is ignored.
#: id: as found (URL prefix and vN allowed). title: str or list of str (first used).
#: abstract: str. categories: list of str or one space-separated str, or None (the domain's
#: default). published: a date (YYYY-MM-DD), an ISO-8601 or RFC-2822 timestamp, or None
#: (derived from the id). version: int or None (else taken from an ``vN`` id suffix).
#: deleted: True for OAI-PMH records whose header says status="deleted".
FIELDS = ("id", "title", "abstract", "categories", "published", "version", "deleted")

#: Quarantine keeps this much of a rejected record's original text.
RAW_CHARS = 20_000


@dataclass(frozen=True)
class RawRecord:
    """One record as a reader found it.

    ``source`` names the file or URL, ``location`` the place inside it ("line 12",
    "entry 3", "row 7"), ``raw`` the original text (for quarantine). ``error`` is set,
    and ``fields`` is None, when the reader could not even make a record of it (a JSON
    line that is not an object, an API error entry, a truncated stream).
    """

    source: str
    location: str
    fields: dict[str, Any] | None
    raw: str
    error: str | None = None


PAPER_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "version": pl.Int32(),
    "title": pl.String(),
    "abstract": pl.String(),
    "categories": pl.List(pl.String()),
    "published": pl.Date(),
    "source": pl.String(),
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "reason": pl.String(),
    "source": pl.String(),
    "location": pl.String(),
    "raw": pl.String(),
}
