"""Readers: format detection, field mapping per format, and damaged input as error records."""

import gzip
import json
import sys
import types

import polars as pl
import pytest

from tasks.corpus.readers import FORMATS, SourceError, detect_format, read_source
from tasks.corpus.records import RAW_CHARS, RawRecord

KAGGLE = "kaggle_arxiv-metadata-oai-snapshot.head200.json"
DAILY_CS = "daily_arxiv_listing_cs_2026-06-10.head5.jsonl"
DAILY_ASTRO = "daily_arxiv_listing_astro-ph_2025-10-14.head5.jsonl"


def _fixture(arxiv_data, name):
    return arxiv_data / "fixtures" / name


def _write_lines(path, lines, compress=False):
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _obj(i, **extra):
    return json.dumps(
        {"id": f"2501.{i:05d}", "title": f"Title {i}", "abstract": "a" * 120, **extra}
    )


# ---- detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        (KAGGLE, "kaggle"),
        (DAILY_CS, "jsonl"),
        (DAILY_ASTRO, "jsonl"),
        ("arxiv_api_atom_2026-07-17_all-nicotine.xml", "atom"),
        ("arxiv_api_atom_legacy_2025-10-17_cs.RO.xml", "atom"),
        ("oaipmh_listrecords_arXiv_physics-plasm-ph_2026-01-05.xml", "oai"),
    ],
)
def test_every_fixture_format_is_detected(arxiv_data, name, fmt):
    assert detect_format(_fixture(arxiv_data, name)) == fmt


def test_samples_are_detected_as_jsonl_through_gzip(arxiv_data):
    assert detect_format(arxiv_data / "cs_lg.jsonl.gz") == "jsonl"
    assert detect_format(arxiv_data / "astro_ph.jsonl.gz") == "jsonl"


def test_gzip_is_seen_through_whatever_the_name(arxiv_data, tmp_path):
    kaggle = _fixture(arxiv_data, KAGGLE).read_bytes()
    oai = _fixture(arxiv_data, "oaipmh_listrecords_arXiv_physics-plasm-ph_2026-01-05.xml")
    (tmp_path / "snap.json.gz").write_bytes(gzip.compress(kaggle))
    (tmp_path / "no_suffix").write_bytes(gzip.compress(oai.read_bytes()))
    assert detect_format(tmp_path / "snap.json.gz") == "kaggle"
    assert detect_format(tmp_path / "no_suffix") == "oai"


def test_parquet_is_detected_by_extension_or_magic(tmp_path):
    df = pl.DataFrame({"id": ["2501.00001"], "title": ["T"], "abstract": ["A"]})
    df.write_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.bin").write_bytes((tmp_path / "a.parquet").read_bytes())
    assert detect_format(tmp_path / "a.parquet") == "hf-parquet"
    assert detect_format(tmp_path / "b.bin") == "hf-parquet"


def test_xml_root_is_found_after_declaration_and_comments(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text('<?xml version="1.0"?>\n<!-- saved 2026 -->\n<a:feed xmlns:a="x"></a:feed>')
    assert detect_format(path) == "atom"
    path.write_text("<html><body/></html>")
    with pytest.raises(SourceError, match=r"XML root <html>"):
        detect_format(path)


def test_undetectable_content_is_named(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("id,title,abstract\n")
    with pytest.raises(SourceError, match=r"notes.txt.*'id,title,abstract"):
        detect_format(path)


# ---- formats ----------------------------------------------------------------------------


def test_kaggle_maps_categories_date_and_version(arxiv_data):
    records = list(read_source(_fixture(arxiv_data, KAGGLE)))
    assert len(records) == 200
    assert all(r.error is None for r in records)
    first = records[0]
    assert first.location == "line 1"
    assert first.source == str(_fixture(arxiv_data, KAGGLE))
    assert first.fields["id"] == "0704.0001"
    assert first.fields["categories"] == "hep-ph"
    assert first.fields["published"] == "Mon, 2 Apr 2007 19:18:42 GMT"
    assert first.fields["version"] == 2
    by_id = {r.fields["id"]: r.fields for r in records}
    # Four versions: the newest one is v4, and the date is still v1's.
    gyro = by_id["0704.0044"]
    assert gyro["version"] == 4
    assert gyro["published"] == "Sat, 31 Mar 2007 17:47:54 GMT"
    assert gyro["categories"] == "astro-ph nlin.CD physics.plasm-ph physics.space-ph"
    # The reader keeps the hard wrapping; validation collapses it.
    assert "\n  magnetized" in gyro["title"]
    assert json.loads(records[43].raw)["id"] == "0704.0044"


def test_daily_listing_summary_is_the_abstract(arxiv_data):
    path = _fixture(arxiv_data, DAILY_CS)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    records = list(read_source(path))
    assert [r.fields["id"] for r in records] == [
        "2606.09896",
        "2606.09931",
        "2606.10053",
        "2606.09858",
        "2606.10112",
    ]
    for record, row in zip(records, rows, strict=True):
        assert record.fields["abstract"] == row["summary"]
        assert record.fields["categories"] == row["categories"]
        assert record.fields["published"] is None
        assert "authors" not in record.fields and "pdf" not in record.fields


def test_daily_listing_astro_keeps_wrapped_summary(arxiv_data):
    records = list(read_source(_fixture(arxiv_data, DAILY_ASTRO)))
    assert [r.location for r in records] == [f"line {i}" for i in range(1, 6)]
    assert records[0].fields["categories"] == ["astro-ph.GA", "gr-qc"]
    assert records[0].fields["abstract"].startswith("The most massive galaxies in the Universe")
    assert "\n" in records[0].fields["abstract"]


def test_primary_category_is_moved_first(tmp_path):
    line = _obj(1, categories=["cs.AI", "cs.LG"], primary_category="cs.LG")
    (record,) = read_source(_write_lines(tmp_path / "a.jsonl", [line]))
    assert record.fields["categories"] == ["cs.LG", "cs.AI"]


def test_sample_streams_with_limit(arxiv_data):
    with gzip.open(arxiv_data / "cs_lg.jsonl.gz", "rt") as f:
        first_ids = [json.loads(next(f))["id"] for _ in range(50)]
    records = list(read_source(arxiv_data / "cs_lg.jsonl.gz", limit=50))
    assert [r.fields["id"] for r in records] == first_ids
    assert records[0].fields["published"] == "2025-03-18"
    assert isinstance(records[0].fields["categories"], list)
    assert list(read_source(arxiv_data / "cs_lg.jsonl.gz", limit=0)) == []


def test_hf_cslg_layout_reads_id_title_abstract_and_ignores_extras(tmp_path):
    df = pl.DataFrame(
        {
            "id": ["2301.00001", "2301.00002", "2301.00003"],
            "title": ["First", "Second", "Third"],
            "abstract": ["A1", "A2", "A3"],
            "__index_level_0__": [7, 8, 9],
        }
    )
    df.write_parquet(tmp_path / "train.parquet", row_group_size=2)
    records = list(read_source(tmp_path / "train.parquet"))
    assert [r.location for r in records] == ["row 1", "row 2", "row 3"]
    assert records[1].fields == {
        "id": "2301.00002",
        "title": "Second",
        "abstract": "A2",
        "categories": None,
        "published": None,
    }
    assert json.loads(records[2].raw) == {"id": "2301.00003", "title": "Third", "abstract": "A3"}


def test_hf_astro_layout_takes_the_first_title_and_skips_big_columns(tmp_path):
    df = pl.DataFrame(
        {
            "arxiv_id": ["1912.04296", "astro-ph0001001_arXiv"],
            "title": [["Dust in galaxies", "alt"], ["Old paper"]],
            "abstract": ["B1", "B2"],
            "introduction": ["long text"] * 2,
            "citation_count": [12, 3],
            "keyword_search": [["dust"], []],
        }
    )
    df.write_parquet(tmp_path / "train-00000-of-00001.parquet")
    records = list(read_source(tmp_path / "train-00000-of-00001.parquet", "hf-parquet"))
    assert [r.fields["id"] for r in records] == ["1912.04296", "astro-ph0001001_arXiv"]
    assert [r.fields["title"] for r in records] == ["Dust in galaxies", "Old paper"]
    assert "long text" not in records[0].raw


def test_folder_reads_every_data_file_in_path_order(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for shard, ids in ((1, ["2301.00003"]), (0, ["2301.00001", "2301.00002"])):
        pl.DataFrame({"id": ids, "title": ids, "abstract": ids}).write_parquet(
            data / f"train-0000{shard}-of-00002.parquet"
        )
    (tmp_path / "README.md").write_text("# card")
    (tmp_path / ".cache").mkdir()
    pl.DataFrame({"id": ["9999.99999"], "title": ["x"], "abstract": ["x"]}).write_parquet(
        tmp_path / ".cache" / "stale.parquet"
    )
    records = list(read_source(tmp_path))
    assert [r.fields["id"] for r in records] == ["2301.00001", "2301.00002", "2301.00003"]
    assert records[2].source.endswith("train-00001-of-00002.parquet")
    assert records[2].location == "row 1"


def test_parquet_without_an_id_column_is_refused(tmp_path):
    pl.DataFrame({"paper": ["x"], "title": ["T"], "abstract": ["A"]}).write_parquet(
        tmp_path / "a.parquet"
    )
    with pytest.raises(SourceError, match=r"lacks column\(s\) id or arxiv_id"):
        list(read_source(tmp_path / "a.parquet"))


# ---- damaged input ----------------------------------------------------------------------


def test_truncated_gzip_keeps_records_before_the_cut(tmp_path):
    lines = [_obj(i, pad="x" * 200) for i in range(1, 401)]
    whole = gzip.compress("\n".join(lines).encode() + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    records = list(read_source(path))
    *good, last = records
    assert len(good) > 10
    assert [r.fields["id"] for r in good] == [f"2501.{i:05d}" for i in range(1, len(good) + 1)]
    assert last.fields is None
    assert last.error == f"truncated input: gzip stream ended early after line {len(good)}"


def test_line_that_is_not_an_object_becomes_an_error_record(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [_obj(1), '["2501.00002", "T"]', "", "42", _obj(5)])
    records = list(read_source(path))
    assert [r.location for r in records] == ["line 1", "line 2", "line 4", "line 5"]
    assert records[1] == RawRecord(
        str(path),
        "line 2",
        None,
        '["2501.00002", "T"]',
        "line 2: not a JSON object (got list)",
    )
    assert records[2].error == "line 4: not a JSON object (got number)"
    assert records[3].fields["id"] == "2501.00005"


def test_invalid_json_keeps_the_text(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", ['{"id": "2501.00001", "title": '])
    (record,) = read_source(path)
    assert record.fields is None
    assert record.error.startswith("line 1: invalid JSON (")
    assert record.raw == '{"id": "2501.00001", "title":'


def test_non_utf8_line_is_an_error_record_and_the_rest_reads(tmp_path):
    bad = b'{"id": "2501.00002", "title": "caf\xe9 au lait"}'
    path = _write_lines(tmp_path / "a.jsonl", [_obj(1), bad, _obj(3)])
    records = list(read_source(path))
    assert records[1].fields is None
    assert records[1].error == "line 2: not valid UTF-8 (byte 0xe9 at offset 34)"
    assert "caf\ufffd au lait" in records[1].raw
    assert [r.fields["id"] for r in (records[0], records[2])] == ["2501.00001", "2501.00003"]


def test_raw_text_is_cut_to_raw_chars(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", ["[" + "1," * RAW_CHARS + "1]"])
    (record,) = read_source(path)
    assert len(record.raw) == RAW_CHARS


def test_kaggle_with_broken_versions_passes_them_on(tmp_path):
    path = _write_lines(tmp_path / "k.json", [_obj(1, versions=[]), _obj(2, versions="v1")])
    first, second = read_source(path, "kaggle")
    assert (first.fields["published"], first.fields["version"]) == ([], None)
    assert second.fields["published"] == "v1"


# ---- sources ----------------------------------------------------------------------------


def test_missing_source_is_named(tmp_path):
    with pytest.raises(SourceError, match=r"nowhere\.jsonl does not exist"):
        read_source(tmp_path / "nowhere.jsonl")


def test_unknown_format_lists_the_formats(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [_obj(1)])
    with pytest.raises(SourceError, match=r"unknown format 'csv'; known formats: jsonl, kaggle"):
        read_source(path, "csv")
    assert FORMATS == ("jsonl", "kaggle", "hf-parquet", "atom", "oai")


def test_folder_without_data_files_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(SourceError, match="holds no data files"):
        read_source(tmp_path)


class _FakeFeedError(ValueError):
    pass


def _fake_feeds(monkeypatch, **parsers):
    fake = types.ModuleType("tasks.corpus.feeds")
    fake.FeedError = _FakeFeedError
    fake.parse_atom = fake.parse_oai = None
    for name, parser in parsers.items():
        setattr(fake, name, parser)
    monkeypatch.setitem(sys.modules, "tasks.corpus.feeds", fake)


def test_feed_records_and_feed_error_are_passed_on(tmp_path, monkeypatch):
    """The XML parsing belongs to feeds.py; here only the hand-over is checked."""
    seen = []

    def parse_atom(data, source):
        seen.append((data, source))
        paper = RawRecord(source, "entry 1", {"id": "2501.00001"}, "<entry/>")
        return types.SimpleNamespace(records=[paper], error="arXiv API error: bad query")

    _fake_feeds(monkeypatch, parse_atom=parse_atom)
    xml = b'<feed xmlns="http://www.w3.org/2005/Atom"><entry/></feed>'
    path = tmp_path / "page.xml.gz"
    path.write_bytes(gzip.compress(xml))
    paper, error = read_source(path)
    assert seen == [(xml, str(path))]
    assert paper.location == "entry 1"
    assert error == RawRecord(str(path), "feed", None, xml.decode(), "arXiv API error: bad query")


def test_unparsable_feed_becomes_one_error_record(tmp_path, monkeypatch):
    def parse_oai(data, source):
        raise _FakeFeedError(f"{source}: malformed XML: no element found: line 3")

    _fake_feeds(monkeypatch, parse_oai=parse_oai)
    path = tmp_path / "listing.xml"
    path.write_text('<?xml version="1.0"?>\n<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">')
    (record,) = read_source(path)
    assert record.fields is None
    assert record.location == "feed"
    assert record.error == f"unreadable feed: {path}: malformed XML: no element found: line 3"
    assert record.raw.startswith("<?xml")
