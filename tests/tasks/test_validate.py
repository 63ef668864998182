"""Validation: the text/id/date helpers, every rejection rule, and the real fixtures end to end."""

import gzip
import json
from datetime import date, timedelta

import polars as pl
import pytest

from tasks.corpus.domains import get_domain
from tasks.corpus.readers import read_source
from tasks.corpus.records import PAPER_SCHEMA, QUARANTINE_SCHEMA, RawRecord
from tasks.corpus.text import clean_text, date_from_id, id_version, normalise_id, parse_date
from tasks.corpus.validate import ValidationConfig, validate

TODAY = date(2026, 11, 21)
CS = get_domain("cs.LG")
ASTRO = get_domain("astro-ph")
EVERYTHING = get_domain("all")
KAGGLE = "kaggle_arxiv-metadata-oai-snapshot.head200.json"


def _abstract(i):
    return (
        f"Paper {i} studies how sparse autoencoders decompose dense embeddings of arXiv "
        "abstracts into interpretable features."
    )


def _rec(i=1, **fields):
    base = {
        "id": f"2501.{i:05d}",
        "title": f"A title for paper {i}",
        "abstract": _abstract(i),
        "categories": ["cs.LG"],
        "published": "2025-01-15",
    }
    base.update(fields)
    return RawRecord("t.jsonl", f"line {i}", base, json.dumps(base, default=str))


def _run(records, domain=CS, **kwargs):
    result = validate(records, domain, today=TODAY, **kwargs)
    c = result.counts
    assert set(c) == {"read", "accepted", "duplicate", "rejected", "other_domain"}
    assert c["read"] == c["accepted"] + c["duplicate"] + c["rejected"] + c["other_domain"]
    assert c["accepted"] == result.papers.height
    assert c["rejected"] == result.quarantine.height
    assert dict(result.papers.schema) == PAPER_SCHEMA
    assert dict(result.quarantine.schema) == QUARANTINE_SCHEMA
    assert result.papers["id"].to_list() == sorted(set(result.papers["id"]))
    return result


def _reasons(result):
    return result.quarantine["reason"].to_list()


def _one_reason(*records, **kwargs):
    result = _run(list(records), **kwargs)
    assert result.counts["accepted"] == 0, result.papers
    (reason,) = _reasons(result)
    return reason


def _write_lines(path, lines, compress=False):
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _line(i, **extra):
    return json.dumps({**_rec(i).fields, **extra})


# ---- helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2401.01234", "2401.01234"),
        ("2401.01234v2", "2401.01234"),
        (" 2401.01234v12\n", "2401.01234"),
        ("arXiv:2401.01234v3", "2401.01234"),
        ("ARXIV:2401.01234", "2401.01234"),
        ("http://arxiv.org/abs/2401.01234v1", "2401.01234"),
        ("https://export.arxiv.org/abs/2401.01234", "2401.01234"),
        ("https://arxiv.org/abs/hep-ph/0001001v2", "hep-ph/0001001"),
        ("0704.0001", "0704.0001"),
        ("1412.9999", "1412.9999"),
        ("1501.00001", "1501.00001"),
        ("hep-ph/0001001", "hep-ph/0001001"),
        ("astro-ph/9906432", "astro-ph/9906432"),
        ("math.GT/0309136v1", "math.GT/0309136"),
        ("cond-mat/9912345", "cond-mat/9912345"),
        ("astro-ph0001001_arXiv", "astro-ph/0001001"),
        ("astro-ph9906432_arXiv", "astro-ph/9906432"),
        ("1912.04296_arXiv", "1912.04296"),
    ],
)
def test_normalise_id(raw, expected):
    assert normalise_id(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "hello",
        "2401.123",  # three digits
        "2401.1234",  # four digits after 1501
        "0704.00001",  # five digits before 1501
        "2413.01234",  # month 13
        "2400.01234",  # month 0
        "704.0001",  # leading zero lost to a float
        "2401.01234v",
        "foo-bar/0001001",  # no such archive
        "hep-ph/000100",  # six digits
        "hep-ph/0013001",  # month 13
        "http://example.org/abs/2401.01234",
    ],
)
def test_normalise_id_names_the_bad_id(raw):
    with pytest.raises(ValueError, match=f"not an arXiv id: {raw!r}"):
        normalise_id(raw)


def test_normalise_id_refuses_non_strings():
    with pytest.raises(ValueError, match="must be a string, got float"):
        normalise_id(2401.01234)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2401.01234v3", 3),
        ("arXiv:2401.01234v1", 1),
        ("http://arxiv.org/abs/hep-ph/0001001v12", 12),
        ("2401.01234", None),
        ("astro-ph0001001_arXiv", None),
        (None, None),
    ],
)
def test_id_version(raw, expected):
    assert id_version(raw) == expected


@pytest.mark.parametrize(
    ("arxiv_id", "expected"),
    [
        ("2401.01234", date(2024, 1, 1)),
        ("0704.0001", date(2007, 4, 1)),
        ("1912.04296v2", date(2019, 12, 1)),
        ("hep-ph/9901001", date(1999, 1, 1)),
        ("hep-th/9108001", date(1991, 8, 1)),
        ("astro-ph/0001001", date(2000, 1, 1)),
        ("math.GT/0309136", date(2003, 9, 1)),
        ("astro-ph0001001_arXiv", date(2000, 1, 1)),
    ],
)
def test_date_from_id(arxiv_id, expected):
    assert date_from_id(arxiv_id) == expected


def test_date_from_id_refuses_a_bad_id():
    with pytest.raises(ValueError, match="not an arXiv id: 'x'"):
        date_from_id("x")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-18", date(2025, 3, 18)),
        (" 2025-03-18 ", date(2025, 3, 18)),
        ("2026-07-17T20:35:09Z", date(2026, 7, 17)),
        ("2026-07-17T20:35:09", date(2026, 7, 17)),
        ("2026-07-17T23:30:00-05:00", date(2026, 7, 18)),
        ("2026-07-17T01:30:00+02:00", date(2026, 7, 16)),
        ("Mon, 2 Apr 2007 19:18:42 GMT", date(2007, 4, 2)),
        ("Sat, 31 Mar 2007 17:47:54 GMT", date(2007, 3, 31)),
        ("Mon, 22 Dec 2014 13:54:29 GMT", date(2014, 12, 22)),
        ("Tue, 3 Apr 2007 22:26:37 -0500", date(2007, 4, 4)),
        (date(2020, 2, 29), date(2020, 2, 29)),
    ],
)
def test_parse_date(value, expected):
    assert parse_date(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "yesterday", "2025-13-01", "2025-02-30", "18/03/2025", "Mon, 2 Foo 2007", 20250318],
)
def test_parse_date_names_the_bad_value(value):
    with pytest.raises(ValueError, match=repr(value).replace("(", r"\(")):
        parse_date(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  A fully differential\ncalculation  \n", "A fully differential calculation"),
        ("Tevatron and\n  LHC energies", "Tevatron and LHC energies"),
        ("tabs\tand\u00a0non-breaking spaces", "tabs and non-breaking spaces"),
        ("We use <i>deep</i> nets", "We use deep nets"),
        ("H<sub>2</sub>O and x<sup>2</sup>", "H2O and x2"),
        ("one<br>two<br/>three<p>four</p>", "one two three four"),
        ('see <a href="https://x.org/">this https URL.</a>', "see this https URL."),
        ('<span class="x">A</span> <FONT size=2>B</FONT>', "A B"),
        ("R&amp;D &lt;3 &#39;quoted&#39; &#x3b1;", "R&D <3 'quoted' \u03b1"),
        ("&amp;lt;i&amp;gt; stays text", "&lt;i&gt; stays text"),
        ("reasoning in <think> tags", "reasoning in <think> tags"),
        ("galaxies at <z>=0.7 with <b> unpaired", "galaxies at <z>=0.7 with <b> unpaired"),
        ("field <B||>_PSR from RM", "field <B||>_PSR from RM"),
        ("<em>bold</em> claims with <think>", "bold claims with <think>"),
        (
            "AT&T and &param stay; $\\emph{x} \\sim 1.5$",
            "AT&T and &param stay; $\\emph{x} \\sim 1.5$",
        ),
        ("   \n\t ", ""),
    ],
)
def test_clean_text(text, expected):
    assert clean_text(text) == expected


# ---- fixtures end to end ----------------------------------------------------------------


def _kaggle_rows(arxiv_data):
    with open(arxiv_data / "fixtures" / KAGGLE) as f:
        return [json.loads(line) for line in f]


def test_kaggle_head200_cs_lg_matches_a_plain_count(arxiv_data):
    rows = _kaggle_rows(arxiv_data)
    n_cs = sum("cs.LG" in row["categories"].split() for row in rows)
    result = _run(read_source(arxiv_data / "fixtures" / KAGGLE), CS)
    assert result.counts == {
        "read": 200,
        "accepted": n_cs,
        "duplicate": 0,
        "rejected": 0,
        "other_domain": 200 - n_cs,
    }


def test_kaggle_head200_astro_matches_a_plain_filter(arxiv_data):
    rows = _kaggle_rows(arxiv_data)
    astro = [r for r in rows if any(c.startswith("astro-ph") for c in r["categories"].split())]
    withdrawn = [r["id"] for r in astro if "withdrawn" in r["abstract"]]
    result = _run(read_source(arxiv_data / "fixtures" / KAGGLE), ASTRO)
    assert withdrawn == ["0704.0156"]
    assert result.papers["id"].to_list() == sorted(r["id"] for r in astro if r["id"] != "0704.0156")
    assert result.counts == {
        "read": 200,
        "accepted": 22,
        "duplicate": 0,
        "rejected": 1,
        "other_domain": 177,
    }
    assert result.quarantine.select("id", "reason", "location").rows() == [
        ("0704.0156", "withdrawn", "line 156")
    ]
    (gyro,) = result.papers.filter(pl.col("id") == "0704.0044").to_dicts()
    assert gyro["title"] == (
        "Astrophysical gyrokinetics: kinetic and fluid turbulent cascades in magnetized "
        "weakly collisional plasmas"
    )
    assert gyro["categories"] == ["astro-ph", "nlin.CD", "physics.plasm-ph", "physics.space-ph"]
    assert gyro["published"] == date(2007, 3, 31)
    assert gyro["version"] == 4
    raw = next(r for r in rows if r["id"] == "0704.0044")
    assert gyro["abstract"] == " ".join(raw["abstract"].split())
    assert gyro["abstract"].startswith("We present a theoretical framework for plasma turbulence")


def test_kaggle_head200_every_rule_on_every_field(arxiv_data):
    result = _run(read_source(arxiv_data / "fixtures" / KAGGLE), EVERYTHING)
    assert result.counts["accepted"] == 197
    assert result.quarantine.select("id", "reason").rows() == [
        ("0704.0071", "abstract too short (87 chars, minimum 100)"),
        ("0704.0108", "abstract too short (78 chars, minimum 100)"),
        ("0704.0156", "withdrawn"),
    ]
    (row,) = result.papers.filter(pl.col("id") == "0704.0002").to_dicts()
    assert row["categories"] == ["math.CO", "cs.CG"]
    assert row["published"] == date(2007, 3, 31)
    assert row["title"] == "Sparsity-certifying Graph Decompositions"


def test_daily_listing_cs(arxiv_data):
    path = arxiv_data / "fixtures" / "daily_arxiv_listing_cs_2026-06-10.head5.jsonl"
    result = _run(read_source(path), CS)
    assert result.counts == {
        "read": 5,
        "accepted": 2,
        "duplicate": 0,
        "rejected": 0,
        "other_domain": 3,
    }
    assert result.papers["id"].to_list() == ["2606.09896", "2606.10112"]
    # The listing has no dates: the id's month stands in.
    assert result.papers["published"].to_list() == [date(2026, 6, 1)] * 2
    assert result.papers["categories"].to_list()[1] == ["cs.GT", "cs.AI", "cs.LG", "econ.TH"]
    assert result.papers["abstract"][0].startswith("In modern online advertising platforms")
    assert result.papers["source"].to_list() == [str(path)] * 2


def test_daily_listing_astro(arxiv_data):
    path = arxiv_data / "fixtures" / "daily_arxiv_listing_astro-ph_2025-10-14.head5.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    result = _run(read_source(path), ASTRO)
    assert result.counts["accepted"] == 5
    assert result.papers["id"].to_list() == sorted(r["id"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    for paper in result.papers.iter_rows(named=True):
        assert paper["abstract"] == " ".join(by_id[paper["id"]]["summary"].split())
        assert paper["published"] == date(2025, 10, 1)


def test_cs_lg_sample_is_accepted_whole(arxiv_data):
    with gzip.open(arxiv_data / "cs_lg.jsonl.gz", "rt") as f:
        rows = sorted((json.loads(line) for line in f), key=lambda r: r["id"])
    result = _run(read_source(arxiv_data / "cs_lg.jsonl.gz"), CS)
    n = len(rows)
    assert result.counts == {
        "read": n,
        "accepted": n,
        "duplicate": 0,
        "rejected": 0,
        "other_domain": 0,
    }
    papers = result.papers
    assert papers["id"].to_list() == [r["id"] for r in rows]
    assert papers["published"].cast(pl.String).to_list() == [r["published"] for r in rows]
    assert papers["categories"].to_list() == [r["categories"] for r in rows]
    assert papers["title"].to_list() == [r["title"] for r in rows]
    # The one abstract with HTML markup loses its tags; every other one is unchanged.
    changed = [p for p, r in zip(papers["abstract"], rows, strict=True) if p != r["abstract"]]
    assert len(changed) == 1
    assert changed[0].endswith("project website: this https URL.")


def test_astro_sample_head_is_accepted(arxiv_data):
    result = _run(read_source(arxiv_data / "astro_ph.jsonl.gz", limit=3000), ASTRO)
    assert result.counts["read"] == result.counts["accepted"] == 3000


def test_hf_cslg_parquet(tmp_path):
    pl.DataFrame(
        {
            "id": ["2301.00002", "2301.00001"],
            "title": ["Second title", "First title"],
            "abstract": [_abstract(2), _abstract(1)],
            "extra": [1.5, 2.5],
        }
    ).write_parquet(tmp_path / "train.parquet")
    result = _run(read_source(tmp_path), CS)
    assert result.papers.select("id", "title", "categories", "published", "version").rows() == [
        ("2301.00001", "First title", ["cs.LG"], date(2023, 1, 1), 1),
        ("2301.00002", "Second title", ["cs.LG"], date(2023, 1, 1), 1),
    ]


def test_hf_astro_parquet(tmp_path):
    pl.DataFrame(
        {
            "arxiv_id": ["1912.04296", "astro-ph0001001_arXiv"],
            "title": [["Dust in nearby galaxies"], ["An old-style paper"]],
            "abstract": [_abstract(1), _abstract(2)],
            "citation_count": [12, 40],
            "keyword_search": [["dust"], ["old"]],
        }
    ).write_parquet(tmp_path / "train-00000-of-00001.parquet")
    result = _run(read_source(tmp_path / "train-00000-of-00001.parquet"), ASTRO)
    assert result.papers.select("id", "title", "categories", "published").rows() == [
        ("1912.04296", "Dust in nearby galaxies", ["astro-ph"], date(2019, 12, 1)),
        ("astro-ph/0001001", "An old-style paper", ["astro-ph"], date(2000, 1, 1)),
    ]


# ---- damaged input through the reader ---------------------------------------------------


def test_truncated_gzip_keeps_what_came_before(tmp_path):
    lines = [_line(i, pad="x" * 200) for i in range(1, 401)]
    whole = gzip.compress("\n".join(lines).encode() + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    result = _run(read_source(path), CS)
    n = result.counts["accepted"]
    assert n > 10
    assert result.papers["id"].to_list() == [f"2501.{i:05d}" for i in range(1, n + 1)]
    assert result.counts["rejected"] == 1
    assert result.quarantine.row(0, named=True) == {
        "id": None,
        "reason": f"truncated input: gzip stream ended early after line {n}",
        "source": str(path),
        "location": "end of input",
        "raw": "",
    }


def test_line_that_is_not_an_object_is_quarantined(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [_line(1), '["2501.00002"]', _line(3)])
    result = _run(read_source(path), CS)
    assert result.counts["accepted"] == 2
    assert result.quarantine.select("reason", "location", "raw").rows() == [
        ("line 2: not a JSON object (got list)", "line 2", '["2501.00002"]')
    ]


def test_invalid_json_is_quarantined(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [_line(1), '{"id": "2501.00002", "title": "T'])
    result = _run(read_source(path), CS)
    (reason,) = _reasons(result)
    assert reason.startswith("line 2: invalid JSON (Unterminated string")
    assert result.quarantine["raw"][0] == '{"id": "2501.00002", "title": "T'


def test_non_utf8_line_is_quarantined(tmp_path):
    bad = _line(2).replace("A title", "A caf\u00e9 title").encode("latin-1")
    path = _write_lines(tmp_path / "a.jsonl", [_line(1), bad])
    result = _run(read_source(path), CS)
    assert result.counts["accepted"] == 1
    (reason,) = _reasons(result)
    assert reason.startswith("line 2: not valid UTF-8 (byte 0xe9")
    assert "caf\ufffd title" in result.quarantine["raw"][0]


# ---- rules ------------------------------------------------------------------------------


def test_reader_error_record_keeps_its_error():
    record = RawRecord("f", "line 3", None, "[1]", error="line 3: not a JSON object (got list)")
    assert _one_reason(record) == "line 3: not a JSON object (got list)"


@pytest.mark.parametrize("missing", ["id", "title", "abstract"])
def test_missing_field_is_named(missing):
    record = _rec(1)
    del record.fields[missing]
    result = _run([record])
    assert _reasons(result) == [f"{missing} missing"]
    assert result.quarantine["id"][0] == (None if missing == "id" else "2501.00001")
    assert result.quarantine["raw"][0] == record.raw


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": 2501.00001}, "id is not a string (got float: 2501.00001)"),
        ({"title": 42}, "title is not a string (got int: 42)"),
        ({"title": [42]}, "title is not a string (got int: 42)"),
        ({"abstract": ["text"]}, "abstract is not a string (got list: ['text'])"),
        (
            {"categories": 7},
            "categories is not a list of strings or a space-separated string (got int: 7)",
        ),
        (
            {"categories": ["cs.LG", 3]},
            "categories is not a list of strings or a space-separated string "
            "(got list: ['cs.LG', 3])",
        ),
        ({"version": "v2"}, "version is not a positive integer (got 'v2')"),
        ({"version": 0}, "version is not a positive integer (got 0)"),
    ],
)
def test_wrong_types_are_named(fields, reason):
    assert _one_reason(_rec(1, **fields)) == reason


def test_title_list_uses_its_first_element():
    result = _run([_rec(1, title=["Main title", "Other"])])
    assert result.papers["title"].to_list() == ["Main title"]


def test_bad_id_is_quarantined_under_that_id():
    result = _run([_rec(1, id="paper-17")])
    assert result.quarantine.select("id", "reason").rows() == [
        ("paper-17", "id not an arXiv id: 'paper-17'")
    ]


def test_html_is_cleaned_from_title_and_abstract():
    abstract = (
        "<p>We train <i>sparse</i> autoencoders &amp; probe the <think> tokens that "
        "reasoning models emit at <z>=0.7 &lt; 1, with&nbsp;results.</p>"
    )
    result = _run([_rec(1, title="H<sub>2</sub>O &amp; <b>dust</b>", abstract=abstract)])
    (paper,) = result.papers.to_dicts()
    assert paper["title"] == "H2O & dust"
    assert paper["abstract"] == (
        "We train sparse autoencoders & probe the <think> tokens that reasoning models emit "
        "at <z>=0.7 < 1, with results."
    )


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("abstract", _abstract(1).replace("sparse", "sp\ufffdrse")),
        ("abstract", _abstract(1).replace(" ", "\x00", 1)),
        ("abstract", _abstract(1).replace("how", "\u0080\u0099how")),
        ("title", "A title with a \x1b escape"),
    ],
)
def test_undecodable_text_is_quarantined(field, text):
    assert _one_reason(_rec(1, **{field: text})) == f"undecodable text in {field}"


def test_tabs_and_newlines_are_not_undecodable():
    result = _run([_rec(1, abstract=_abstract(1).replace(" ", "\t\r\n  "))])
    assert result.papers["abstract"].to_list() == [_abstract(1)]


def test_duplicate_ids_keep_the_newest_version():
    records = [
        _rec(1, id="2501.00001v1", title="Version one"),
        _rec(2, id="2501.00001", version=3, title="Version three"),
        _rec(3, id="arXiv:2501.00001v2", title="Version two"),
        _rec(4),
    ]
    result = _run(records)
    assert result.counts == {
        "read": 4,
        "accepted": 2,
        "duplicate": 2,
        "rejected": 0,
        "other_domain": 0,
    }
    assert result.papers.select("id", "version", "title").rows() == [
        ("2501.00001", 3, "Version three"),
        ("2501.00004", 1, "A title for paper 4"),
    ]


def test_duplicate_ids_with_equal_versions_keep_the_later_record():
    records = [_rec(1, title="Earlier copy"), _rec(2, id="2501.00001", title="Later copy")]
    result = _run(records)
    assert result.papers["title"].to_list() == ["Later copy"]
    assert result.counts["duplicate"] == 1


def test_same_text_under_another_id_is_quarantined():
    first = _rec(1)
    copy = _rec(
        2,
        title="  A TITLE for paper 1 ",
        abstract=_abstract(1).replace(" ", "\n", 3).upper(),
    )
    result = _run([first, copy, _rec(3)])
    assert result.papers["id"].to_list() == ["2501.00001", "2501.00003"]
    assert result.quarantine.select("id", "reason", "location").rows() == [
        ("2501.00002", "same title and abstract as 2501.00001", "line 2")
    ]


@pytest.mark.parametrize(
    "abstract",
    [
        "This paper has been withdrawn by the author due to a crucial error in equation 3.",
        "  This paper has been withdrawn by the authors.\n",
        "Withdrawn.",
        "withdrawn",
        "Paper withdrawn",
        "This article has been removed by arXiv administrators because it plagiarizes "
        "earlier work by other authors without attribution, which is not allowed.",
        "The authors withdraw this paper since the main proof of Theorem 2 is incomplete "
        "and a corrected version will be submitted later.",
    ],
)
def test_withdrawn_abstracts_are_quarantined(abstract):
    assert _one_reason(_rec(1, abstract=abstract)) == "withdrawn"


def test_long_abstract_about_withdrawal_is_kept():
    abstract = (
        "We model nicotine withdrawal symptoms with a recurrent network trained on "
        "longitudinal patient data, and show that the learned latent states predict "
        "relapse two weeks ahead better than clinical scores on three cohorts."
    )
    assert _run([_rec(1, abstract=abstract)]).counts["accepted"] == 1


def test_short_abstract_and_title_are_named_with_their_length():
    assert _one_reason(_rec(1, abstract="a" * 99)) == "abstract too short (99 chars, minimum 100)"
    assert _one_reason(_rec(1, title="GANs")) == "title too short (4 chars, minimum 5)"
    assert _one_reason(_rec(1, abstract=" \n\t")) == "abstract empty after cleaning"
    assert _one_reason(_rec(1, title="")) == "title empty after cleaning"
    # Length counts after cleaning: 99 letters padded with whitespace are still 99.
    padded = "a" * 50 + "   \n  " + "a" * 48
    assert _one_reason(_rec(1, abstract=padded)) == "abstract too short (99 chars, minimum 100)"


def test_config_minimums_apply():
    config = ValidationConfig(min_title_chars=2, min_abstract_chars=20)
    result = _run([_rec(1, title="AI", abstract="a" * 20)], config=config)
    assert result.counts["accepted"] == 1
    with pytest.raises(ValueError, match="min_abstract_chars must be at least 1, got 0"):
        ValidationConfig(min_abstract_chars=0)


@pytest.mark.parametrize("value", ["2025-13-45", "last week", "Mon, 2 Apr 2007 25:99:00 GMT"])
def test_malformed_date_is_named(value):
    assert _one_reason(_rec(1, published=value)) == f"malformed published date {value!r}"


def test_future_date_is_quarantined_with_two_days_of_slack():
    in_two_days = (TODAY + timedelta(days=2)).isoformat()
    in_three_days = (TODAY + timedelta(days=3)).isoformat()
    result = _run([_rec(1, published=in_two_days), _rec(2, published=in_three_days)])
    assert result.papers["id"].to_list() == ["2501.00001"]
    assert _reasons(result) == [f"date in the future: {in_three_days} (today is {TODAY})"]


def test_missing_date_comes_from_the_id():
    result = _run([_rec(1, id="hep-ph/9901001", published=None, categories="hep-ph cs.LG")])
    assert result.papers["published"].to_list() == [date(1999, 1, 1)]


def test_timestamps_become_dates():
    records = [
        _rec(1, published="2025-01-15T23:59:59Z"),
        _rec(2, published="Wed, 15 Jan 2025 19:18:42 GMT"),
    ]
    result = _run(records)
    assert result.papers["published"].to_list() == [date(2025, 1, 15)] * 2


def test_non_category_tokens_are_dropped():
    records = [
        _rec(1, categories="cs.LG I.2.6 68T05"),
        _rec(2, categories=["stat.ML", "cs.LG", "stat.ML", "F.2.2; G.2.2", "Machine Learning"]),
        _rec(3, categories=None),
        _rec(4, categories=["q-bio.NC", "cs.LG", "physics.data-an", "cond-mat.dis-nn"]),
    ]
    result = _run(records)
    assert result.papers["categories"].to_list() == [
        ["cs.LG"],
        ["stat.ML", "cs.LG"],
        ["cs.LG"],
        ["q-bio.NC", "cs.LG", "physics.data-an", "cond-mat.dis-nn"],
    ]


def test_categories_without_any_code_are_quarantined():
    reason = _one_reason(_rec(1, categories=["I.2.6", "68T05"]))
    assert reason == "no arXiv category codes in categories ['I.2.6', '68T05']"
    assert _one_reason(_rec(1, categories="")) == "no arXiv category codes in categories ''"


def test_other_domain_is_counted_not_quarantined():
    records = [_rec(1, categories=["math.CO"]), _rec(2, categories="astro-ph.GA"), _rec(3)]
    result = _run(records)
    assert result.counts == {
        "read": 3,
        "accepted": 1,
        "duplicate": 0,
        "rejected": 0,
        "other_domain": 2,
    }
    astro = _run(records, ASTRO)
    assert astro.papers["id"].to_list() == ["2501.00002"]


def test_known_ids_only_come_back_when_newer():
    known = {"2501.00001": 2, "2501.00002": 1}
    records = [
        _rec(1, version=2),
        _rec(2, id="2501.00001v1"),
        _rec(3, id="2501.00002v3"),
        _rec(4),
    ]
    result = _run(records, known=known)
    assert result.papers.select("id", "version").rows() == [("2501.00002", 3), ("2501.00004", 1)]
    assert result.counts["duplicate"] == 2
    assert result.counts["rejected"] == 0


def test_deleted_record_is_quarantined():
    record = RawRecord("oai.xml", "record 2", {"id": "2501.00001", "deleted": True}, "<record/>")
    result = _run([record])
    assert result.quarantine.rows() == [
        ("2501.00001", "deleted record", "oai.xml", "record 2", "<record/>")
    ]


def test_no_records_give_empty_tables():
    result = _run([])
    assert result.papers.height == result.quarantine.height == 0
    assert result.counts == dict.fromkeys(
        ("read", "accepted", "duplicate", "rejected", "other_domain"), 0
    )
