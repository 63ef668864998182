"""`sae ingest`: real sample data in, counts out, exit codes that tell what happened."""

import gzip
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.corpus.storage import read_papers, read_quarantine

runner = CliRunner()


def sample_lines(arxiv_data, n):
    with gzip.open(arxiv_data / "cs_lg.jsonl.gz", "rt") as f:
        return [next(f) for _ in range(n)]


def corpus():
    store = Store.from_settings(get_settings())
    return read_papers(store, get_domain("cs.LG")), read_quarantine(store)


def test_ingest_sample_then_rerun_is_all_duplicates(arxiv_data):
    src = str(arxiv_data / "cs_lg.jsonl.gz")
    first = runner.invoke(app, ["ingest", "cs.LG", src, "--limit", "300"])
    assert first.exit_code == 0, first.output
    assert "300 accepted, 0 duplicate, 0 rejected" in first.output
    again = runner.invoke(app, ["ingest", "cs_lg", src, "--limit", "350"])
    assert again.exit_code == 0, again.output
    assert "50 accepted, 300 duplicate, 0 rejected" in again.output
    papers, quarantine = corpus()
    expected = [json.loads(line)["id"] for line in sample_lines(arxiv_data, 350)]
    assert papers["id"].to_list() == sorted(expected)
    assert quarantine.is_empty()


def test_bad_records_are_quarantined_and_good_ones_kept(tmp_path, arxiv_data):
    good = sample_lines(arxiv_data, 3)
    bad_abstract = json.loads(good[0]) | {"id": "2601.00001", "abstract": "too short"}
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        good[0] + "[1, 2]\n" + json.dumps(bad_abstract) + "\n" + good[1] + "{broken\n" + good[2]
    )
    result = runner.invoke(app, ["ingest", "cs.LG", str(path)])
    assert result.exit_code == 0, result.output
    assert "3 accepted, 0 duplicate, 3 rejected" in result.output
    papers, quarantine = corpus()
    assert papers.height == 3
    assert sorted(quarantine["location"].to_list()) == ["line 2", "line 3", "line 5"]
    reasons = " | ".join(quarantine["reason"].to_list())
    assert "abstract" in reasons and "not a JSON object" in reasons


def test_truncated_gzip_keeps_what_was_read_and_exits_1(tmp_path, arxiv_data):
    data = (arxiv_data / "cs_lg.jsonl.gz").read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[:200_000])
    result = runner.invoke(app, ["ingest", "cs.LG", str(path)])
    assert result.exit_code == 1, result.output
    assert "input itself is damaged" in result.output
    papers, quarantine = corpus()
    assert papers.height > 100
    assert quarantine["reason"].str.starts_with("truncated input").sum() == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "cs.XX", "whatever"], "unknown domain 'cs.XX'"),
        (["ingest", "cs.LG", "/no/such/file.jsonl"], "/no/such/file.jsonl"),
        (["ingest", "cs.LG", "{data}", "--format", "csv"], "csv"),
    ],
)
def test_unusable_input_exits_2_with_the_problem_named(args, message, arxiv_data):
    args = [a.replace("{data}", str(arxiv_data / "cs_lg.jsonl.gz")) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_unwritable_store_exits_2_before_reading(tmp_path, monkeypatch, arxiv_data):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SAE_STORE", str(tmp_path / "file" / "store"))
    result = runner.invoke(app, ["ingest", "cs.LG", str(arxiv_data / "cs_lg.jsonl.gz")])
    assert result.exit_code == 2
    assert "cannot write" in result.output and "file/store" in result.output


def test_ingest_into_s3(s3_store_root, arxiv_data):
    result = runner.invoke(
        app, ["ingest", "cs.LG", str(arxiv_data / "cs_lg.jsonl.gz"), "--limit", "40"]
    )
    assert result.exit_code == 0, result.output
    assert "s3://sae-test/store/corpus/part-" in result.output
    papers, _ = corpus()
    assert papers.height == 40
    assert papers.schema["categories"] == pl.List(pl.String)


@pytest.mark.parametrize(
    "fixture, domain, accepted",
    [
        ("arxiv_api_atom_2026-07-17_all-nicotine.xml", "cs.LG", None),
        ("arxiv_api_atom_legacy_2025-10-17_cs.RO.xml", "cs.LG", None),
        ("oaipmh_listrecords_arXiv_physics-plasm-ph_2026-01-05.xml", "astro-ph", None),
        ("daily_arxiv_listing_astro-ph_2025-10-14.head5.jsonl", "astro-ph", 5),
        ("kaggle_arxiv-metadata-oai-snapshot.head200.json", "astro-ph", 22),
    ],
)
def test_every_fixture_format_ingests(fixture, domain, accepted, arxiv_data):
    result = runner.invoke(app, ["ingest", domain, str(arxiv_data / "fixtures" / fixture)])
    assert result.exit_code == 0, result.output
    counts = result.output.split(":", 1)[1]
    read = int(counts.split("(of ")[1].split()[0])
    assert read > 0
    if accepted is not None:
        assert f" {accepted} accepted" in counts


def test_an_atom_error_feed_is_quarantined_and_exits_1(tmp_path):
    feed = tmp_path / "error.xml"
    feed.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<feed xmlns="http://www.w3.org/2005/Atom"><id>https://arxiv.org/api/x</id>'
        "<entry><id>https://arxiv.org/api/errors#incorrect_id_format_for_1234</id>"
        "<title>Error</title><summary>incorrect id format for 1234</summary></entry></feed>"
    )
    result = runner.invoke(app, ["ingest", "cs.LG", str(feed)])
    assert result.exit_code == 1, result.output
    assert "incorrect id format for 1234" in result.output
    _, quarantine = corpus()
    assert quarantine["location"].to_list() == ["feed"]


def test_a_missing_source_is_one_line_naming_the_fix():
    result = runner.invoke(app, ["ingest", "cs_lg", "missing.jsonl.gz"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "missing.jsonl.gz does not exist" in line and "give the path" in line
    assert "Traceback" not in result.output
