"""Atom and OAI-PMH parsing, on the real fixtures and on arXivRaw built from its description."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tasks.corpus.feeds import AtomPage, FeedError, OaiPage, parse_atom, parse_oai
from tests.tasks.arxiv_server import (
    MALFORMED,
    Paper,
    atom_entry,
    atom_error,
    atom_feed,
    oai_deleted,
    oai_error,
    oai_list_records,
    oai_raw_record,
)

LEGACY = "arxiv_api_atom_legacy_2025-10-17_cs.RO.xml"
CURRENT = "arxiv_api_atom_2026-07-17_all-nicotine.xml"
OAI_ARXIV = "oaipmh_listrecords_arXiv_physics-plasm-ph_2026-01-05.xml"


def _fixture(arxiv_data, name: str) -> bytes:
    return (arxiv_data / "fixtures" / name).read_bytes()


def _by_id(page: AtomPage | OaiPage, arxiv_id: str) -> dict:
    (fields,) = [r.fields for r in page.records if r.fields and arxiv_id in r.fields["id"]]
    return fields


# --- Atom -----------------------------------------------------------------------------------


def test_both_atom_serialisations_give_the_same_structure(arxiv_data):
    legacy = parse_atom(_fixture(arxiv_data, LEGACY), "legacy.xml")
    current = parse_atom(_fixture(arxiv_data, CURRENT), "current.xml")

    assert (legacy.total_results, legacy.start_index, legacy.items_per_page) == (5619, 0, 2)
    assert (current.total_results, current.start_index, current.items_per_page) == (58, 0, 10)
    assert legacy.error is None and current.error is None
    assert [len(legacy.records), len(current.records)] == [2, 10]

    shapes = {
        tuple((k, type(v).__name__) for k, v in r.fields.items())
        for r in legacy.records + current.records
    }
    assert shapes == {
        (
            ("id", "str"),
            ("version", "int"),
            ("title", "str"),
            ("abstract", "str"),
            ("categories", "list"),
            ("published", "str"),
        )
    }
    assert [r.location for r in current.records[:2]] == ["entry 1", "entry 2"]
    assert {r.source for r in legacy.records} == {"legacy.xml"}
    assert all(r.error is None and r.raw.startswith("<entry") for r in current.records)


def test_legacy_atom_entry_values(arxiv_data):
    page = parse_atom(_fixture(arxiv_data, LEGACY), "legacy.xml")
    first = _by_id(page, "2510.14968")
    assert first["id"] == "http://arxiv.org/abs/2510.14968v1"
    assert first["version"] == 1
    # Kept as found, hard wrap included: whitespace is validation's business.
    assert first["title"] == (
        "RDD: Retrieval-Based Demonstration Decomposer for Planner Alignment in\n"
        "  Long-Horizon Tasks"
    )
    assert first["abstract"].startswith("  To tackle long-horizon tasks")
    assert first["categories"] == ["cs.RO", "cs.AI", "cs.CV", "cs.LG", "cs.SY", "eess.SY"]
    assert first["published"] == "2025-10-16T17:59:37Z"
    assert "2510.14968v1" in page.records[0].raw


def test_raw_text_is_the_entry_itself_and_parses_back(arxiv_data):
    page = parse_atom(_fixture(arxiv_data, LEGACY), "legacy.xml")
    raw = page.records[1].raw
    assert raw.startswith('<entry xmlns="http://www.w3.org/2005/Atom">')
    assert raw.endswith("</entry>") and "ns0:" not in raw
    again = parse_atom(atom_feed([raw], total=1, start=0, per_page=1), "again")
    assert again.records[0].fields == page.records[1].fields


def test_current_atom_entry_values(arxiv_data):
    page = parse_atom(_fixture(arxiv_data, CURRENT), "current.xml")
    first = _by_id(page, "1509.01687")
    assert first["id"] == "http://arxiv.org/abs/1509.01687v1"
    assert (
        first["title"] == "Single Molecule Transistor based Nanopore for the detection of Nicotine"
    )
    assert first["categories"] == ["cond-mat.mes-hall", "physics.comp-ph"]
    assert first["published"] == "2015-09-05T10:21:46Z"
    old_style = _by_id(page, "q-bio/0509018")
    assert (old_style["id"], old_style["version"]) == ("http://arxiv.org/abs/q-bio/0509018v2", 2)
    assert old_style["categories"] == ["q-bio.BM", "q-bio.SC"]


def test_primary_category_comes_first_once_whatever_the_element_order():
    entry = atom_entry(Paper("2601.00001", categories=("stat.ML", "cs.LG")))
    # Make cs.LG the primary while the category elements list stat.ML first.
    entry = entry.replace('primary_category term="stat.ML"', 'primary_category term="cs.LG"')
    page = parse_atom(atom_feed([entry], total=1, start=0, per_page=1), "s")
    assert page.records[0].fields["categories"] == ["cs.LG", "stat.ML"]


def test_atom_error_entry_is_an_error_not_a_paper():
    page = parse_atom(atom_error("incorrect id format for 1234"), "s")
    assert page.records == []
    assert "incorrect id format for 1234" in page.error


def test_https_error_id_is_recognised_too():
    body = atom_error("max_results too large").replace(b"http://arxiv.org", b"https://arxiv.org")
    assert "max_results too large" in parse_atom(body, "s").error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (MALFORMED, "malformed XML"),
        (b"", "malformed XML"),
        (b"<html><body>Service Unavailable</body></html>", "expected a feed element"),
        (atom_feed([], total=1, start=0, per_page=1).replace(b">1<", b">many<", 1), "not an int"),
    ],
)
def test_broken_atom_raises_feed_error_naming_source(body, message):
    with pytest.raises(FeedError, match=message) as info:
        parse_atom(body, "http://x/api/query?start=0")
    assert "http://x/api/query?start=0" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_entity_declarations_are_refused():
    bomb = b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY a "aaaa">]><feed>&a;</feed>'
    with pytest.raises(FeedError, match="entities"):
        parse_atom(bomb, "s")


# --- OAI-PMH --------------------------------------------------------------------------------


def test_oai_arxiv_fixture(arxiv_data):
    page = parse_oai(_fixture(arxiv_data, OAI_ARXIV), "oai.xml")
    assert [r.fields["id"] for r in page.records] == ["2504.11237", "2508.21012", "2510.07502"]
    assert page.resumption_token is None and page.complete_list_size is None
    assert page.error_code is None and page.error is None
    first = page.records[0].fields
    assert first["categories"] == "physics.atom-ph physics.optics physics.plasm-ph quant-ph"
    assert first["title"] == "Periodic table for highly charged ions"
    assert first["abstract"].startswith("Mendeleev's periodic table")  # &#39; decoded
    assert first["version"] is None
    # <created>, not the submission date: 2508.21012 is an August paper "created" in December.
    assert page.records[1].fields["published"] == "2025-12-16"
    assert page.records[2].fields["categories"] == "physics.plasm-ph physics.space-ph"
    assert [r.location for r in page.records] == ["record 1", "record 2", "record 3"]
    assert "oai:arXiv.org:2504.11237" in page.records[0].raw


def test_arxiv_raw_gives_v1_date_and_highest_version():
    paper = Paper(
        "2412.01234",
        title="Sparse autoencoders at scale",
        categories=("cs.LG", "stat.ML"),
        submitted=datetime(2024, 12, 22, 13, 54, 29, tzinfo=UTC),
        versions=3,
        revised=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
    )
    page = parse_oai(oai_list_records([oai_raw_record(paper)], "tok1", complete_list_size=7), "s")
    fields = page.records[0].fields
    assert fields == {
        "id": "2412.01234",
        "version": 3,
        "title": "Sparse autoencoders at scale",
        "abstract": "A canned abstract about sparse autoencoders.",
        "categories": "cs.LG stat.ML",
        "published": "Sun, 22 Dec 2024 13:54:29 GMT",
    }
    assert (page.resumption_token, page.complete_list_size) == ("tok1", 7)


def test_arxiv_raw_versions_out_of_order_still_pick_v1():
    record = oai_raw_record(
        Paper("2401.00002", versions=2, revised=datetime(2025, 3, 1, tzinfo=UTC))
    )
    v1, v2 = record.index('<version version="v1">'), record.index('<version version="v2">')
    end = record.index("<title>")
    swapped = record[:v1] + record[v2:end] + record[v1:v2] + record[end:]
    fields = parse_oai(oai_list_records([swapped], None), "s").records[0].fields
    assert fields["published"].endswith("5 Jan 2026 12:00:00 GMT")
    assert fields["version"] == 2


def test_empty_resumption_token_means_done():
    page = parse_oai(oai_list_records([oai_raw_record(Paper("2601.00001"))], None), "s")
    assert page.resumption_token is None
    assert len(page.records) == 1


def test_deleted_record():
    page = parse_oai(oai_list_records([oai_deleted("2301.00007", date(2026, 1, 5))], None), "s")
    (record,) = page.records
    assert record.fields == {"id": "2301.00007", "deleted": True}
    assert 'status="deleted"' in record.raw


def test_no_records_match_is_an_empty_page_not_an_error():
    page = parse_oai(oai_error("noRecordsMatch", "No records match"), "s")
    assert page.records == [] and page.resumption_token is None
    assert (page.error_code, page.error) == ("noRecordsMatch", None)


def test_bad_resumption_token_is_an_error():
    page = parse_oai(oai_error("badResumptionToken", "token expired"), "s")
    assert page.error_code == "badResumptionToken"
    assert "badResumptionToken" in page.error and "token expired" in page.error


def test_record_with_unknown_metadata_format_becomes_an_error_record():
    dc = (
        "<record><header><identifier>oai:arXiv.org:2601.00009</identifier>"
        "<datestamp>2026-01-05</datestamp></header><metadata>"
        '<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/"/>'
        "</metadata></record>"
    )
    (record,) = parse_oai(oai_list_records([dc], None), "s").records
    assert record.fields is None
    assert "2601.00009" in record.error and "oai_dc" in record.error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (oai_list_records([], None)[:-20], "malformed XML"),
        (atom_feed([], total=0, start=0, per_page=1), "expected a OAI-PMH element"),
        (
            oai_error("x", "y").replace(b"<error", b"<nothing").replace(b"</error", b"</nothing"),
            "neither",
        ),
    ],
)
def test_broken_oai_raises_feed_error(body, message):
    with pytest.raises(FeedError, match=message):
        parse_oai(body, "oai-source")
