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
    papers_by_id,
    read_papers,
    read_watermark,
    watermark_path,
    write_papers,
    write_watermark,
)

CS = get_domain("cs.LG")


def papers(*rows, categories=("cs.LG",)):
    """Rows (id, version) or (id, version, categories)."""
    return pl.DataFrame(
        [
            {
                "id": row[0],
                "version": row[1],
                "title": f"title {row[0]} v{row[1]}",
                "abstract": "a" * 120,
                "categories": list(row[2] if len(row) > 2 else categories),
                "published": date(2026, 1, 2),
                "source": "test",
            }
            for row in rows
        ],
        schema=PAPER_SCHEMA,
    )


def test_parts_add_up_and_newest_version_wins(store):
    assert read_papers(store, CS).is_empty()
    write_papers(store, papers(("2601.00002", 1), ("2601.00001", 1)))
    write_papers(store, papers(("2601.00002", 3), ("2601.00003", 1)))
    write_papers(store, papers(("2601.00002", 2)))  # an older copy arriving late
    got = read_papers(store, CS)
    assert got["id"].to_list() == ["2601.00001", "2601.00002", "2601.00003"]
    assert got.filter(pl.col("id") == "2601.00002")["title"].item() == "title 2601.00002 v3"
    assert known_versions(store) == {"2601.00001": 1, "2601.00002": 3, "2601.00003": 1}
    assert got.schema == pl.Schema(PAPER_SCHEMA)


def test_a_domain_is_a_view_over_one_corpus(store):
    write_papers(
        store,
        papers(
            ("2601.00001", 1, ["cs.LG", "cs.CV"]),
            ("2601.00002", 1, ["cs.CV"]),
            ("2601.00003", 1, ["astro-ph.GA", "gr-qc"]),
            ("2601.00004", 1, ["stat.ML", "cs.LG"]),
        ),
    )
    assert len(store.list("corpus")) == 1  # each paper stored once, whatever its fields

    def ids(name, **kw):
        return read_papers(store, get_domain(name), **kw)["id"].to_list()

    assert ids("cs.LG") == ["2601.00001", "2601.00004"]
    assert ids("cs.CV") == ["2601.00001", "2601.00002"]
    assert ids("cs") == ["2601.00001", "2601.00002", "2601.00004"]
    assert ids("astro-ph") == ids("gr-qc") == ["2601.00003"]
    assert ids("cs.CV+stat.ML") == ["2601.00001", "2601.00002", "2601.00004"]
    assert ids("all") == [f"2601.0000{i}" for i in range(1, 5)]
    assert ids("hep-th") == []
    only_ids = read_papers(store, get_domain("cs.CV"), columns=["id"])
    assert only_ids.columns == ["id"] and only_ids.height == 2

    # A new version re-listed in astro-ph only leaves the cs views, with no copy behind.
    write_papers(store, papers(("2601.00002", 2, ["astro-ph.IM"])))
    assert ids("cs.CV") == ["2601.00001"]
    assert ids("astro-ph") == ["2601.00002", "2601.00003"]
    assert read_papers(store, get_domain("all")).height == 4
    # Texts by id, whatever view a paper is in now (a snapshot's paper that moved).
    moved = papers_by_id(store, ["2601.00002", "2699.99999"], columns=["id", "title"])
    assert moved.rows() == [("2601.00002", "title 2601.00002 v2")]


def test_nothing_to_write_writes_nothing(store):
    assert write_papers(store, papers()) is None
    assert store.list("corpus") == []


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
