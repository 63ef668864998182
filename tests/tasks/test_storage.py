"""Corpus parts, quarantine and watermark under the store root (local and S3)."""

import json
from datetime import date

import polars as pl
import pytest

from tasks.corpus.domains import get_domain
from tasks.corpus.records import PAPER_SCHEMA
from tasks.corpus.storage import (
    WatermarkError,
    known_versions,
    read_papers,
    read_watermark,
    watermark_path,
    write_papers,
    write_watermark,
)

CS = get_domain("cs.LG")


def papers(*rows):
    return pl.DataFrame(
        [
            {
                "id": i,
                "version": v,
                "title": f"title {i} v{v}",
                "abstract": "a" * 120,
                "categories": ["cs.LG"],
                "published": date(2026, 1, 2),
                "source": "test",
            }
            for i, v in rows
        ],
        schema=PAPER_SCHEMA,
    )


def test_parts_add_up_and_newest_version_wins(store):
    assert read_papers(store, CS).is_empty()
    write_papers(store, CS, papers(("2601.00002", 1), ("2601.00001", 1)))
    write_papers(store, CS, papers(("2601.00002", 3), ("2601.00003", 1)))
    write_papers(store, CS, papers(("2601.00002", 2)))  # an older copy arriving late
    got = read_papers(store, CS)
    assert got["id"].to_list() == ["2601.00001", "2601.00002", "2601.00003"]
    assert got.filter(pl.col("id") == "2601.00002")["title"].item() == "title 2601.00002 v3"
    assert known_versions(store, CS) == {"2601.00001": 1, "2601.00002": 3, "2601.00003": 1}
    assert got.schema == pl.Schema(PAPER_SCHEMA)


def test_nothing_to_write_writes_nothing(store):
    assert write_papers(store, CS, papers()) is None
    assert store.list("corpus/cs_lg") == []


def test_watermark_moves_forward_only(store):
    assert read_watermark(store, CS) is None
    write_watermark(store, CS, date(2026, 3, 5))
    write_watermark(store, CS, date(2026, 3, 1))
    assert read_watermark(store, CS).newest == date(2026, 3, 5)
    write_watermark(store, CS, date(2026, 3, 9))
    assert read_watermark(store, CS).newest == date(2026, 3, 9)


def _mark(**fields):
    return json.dumps({"updated_at": "x", **fields}).encode()


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"{not json", "corrupt"),
        (_mark(domain="cs.LG"), "corrupt"),
        (_mark(domain="cs.LG", newest="March"), "corrupt"),
        (_mark(domain="astro-ph", newest="2026-01-01"), "astro-ph"),
        (_mark(domain="cs.LG", newest="2099-01-01"), "future"),
    ],
)
def test_untrustworthy_watermark_is_an_error_naming_the_file(store, content, problem):
    store.write_bytes(watermark_path(CS), content)
    with pytest.raises(WatermarkError, match=problem) as info:
        read_watermark(store, CS, today=date(2026, 11, 21))
    assert "watermarks/cs_lg.json" in str(info.value)
    # Writing a new watermark (the user passed --since) replaces the bad file.
    write_watermark(store, CS, date(2026, 11, 20))
    assert read_watermark(store, CS, today=date(2026, 11, 21)).newest == date(2026, 11, 20)
