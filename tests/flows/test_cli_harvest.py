"""`sae harvest` against a local arXiv stand-in: papers in, watermark moved, errors named."""

from datetime import UTC, date, datetime

import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.corpus.storage import read_papers, read_watermark
from tests.tasks.arxiv_server import Paper, Reply, oai_raw_record

runner = CliRunner()
CS = get_domain("cs.LG")
ABSTRACT = "We study sparse autoencoders trained on dense text embeddings of abstracts. " * 3


def paper(i: int, day: int, categories: tuple[str, ...] = ("cs.LG",)) -> Paper:
    return Paper(
        f"2601.{i:05d}",
        title=f"Paper number {i}",
        abstract=ABSTRACT,
        categories=categories,
        submitted=datetime(2026, 1, day, 9, 0, tzinfo=UTC),
    )


@pytest.fixture
def server(arxiv_stand_in):
    return arxiv_stand_in


def store():
    return Store.from_settings(get_settings())


def test_api_harvest_fills_the_corpus_and_moves_the_watermark(server):
    server.api_entries = [paper(i, 5 + i % 3) for i in range(5)]
    args = ["harvest", "cs.LG", "--since", "2026-01-05", "--until", "2026-01-08"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 accepted, 0 duplicate, 0 rejected" in result.output
    assert read_papers(store(), CS)["id"].to_list() == [f"2601.{i:05d}" for i in range(5)]
    assert read_watermark(store(), CS).newest == date(2026, 1, 7)

    # The next run starts from the watermark (less the overlap) and adds only what is new.
    server.api_entries.append(paper(9, 8))
    again = runner.invoke(app, ["harvest", "cs.LG", "--until", "2026-01-09"])
    assert again.exit_code == 0, again.output
    assert "1 accepted, 5 duplicate" in again.output
    assert (
        "submittedDate:[202601050000 TO 202601092359]" in server.requests[-1].query["search_query"]
    )
    assert read_watermark(store(), CS).newest == date(2026, 1, 8)


def test_oai_harvest_keeps_only_papers_first_submitted_in_the_window(server):
    new = paper(1, 6)
    revised = Paper(
        "2512.00002",
        title="An old paper revised",
        abstract=ABSTRACT,
        submitted=datetime(2025, 12, 1, tzinfo=UTC),
        versions=2,
        revised=datetime(2026, 1, 6, tzinfo=UTC),
    )
    server.oai_pages = [[oai_raw_record(new)], [oai_raw_record(revised)]]
    args = ["harvest", "cs.LG", "--since", "2026-01-06", "--until", "2026-01-06"]
    result = runner.invoke(app, [*args, "--source", "oai"])
    assert result.exit_code == 0, result.output
    assert "1 accepted" in result.output
    assert read_papers(store(), CS)["id"].to_list() == ["2601.00001"]
    assert len(server.requests) == 2  # followed the resumption token


def test_a_refused_query_exits_2_and_leaves_the_watermark(server):
    server.fail(Reply.error(400, body=b"bad query"))
    args = ["harvest", "cs.LG", "--since", "2026-01-05", "--until", "2026-01-06"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "400" in result.output and server.api_url in result.output
    assert read_watermark(store(), CS) is None


def test_since_after_until_is_refused(server):
    result = runner.invoke(
        app, ["harvest", "cs.LG", "--since", "2026-02-01", "--until", "2026-01-01"]
    )
    assert result.exit_code == 2
    assert "after" in result.output
    assert server.requests == []


FIELDS = {
    1: ("gr-qc",),
    2: ("astro-ph.CO", "gr-qc"),  # a cross-list
    3: ("hep-th",),
    4: ("cs.LG", "stat.ML"),
    5: ("stat.ML",),
    6: ("cs.CV",),
}


def test_a_category_is_harvested_by_its_own_query_and_only_its_papers_arrive(server):
    server.api_entries = [paper(i, 6, cats) for i, cats in FIELDS.items()]
    args = ["harvest", "gr_qc", "--since", "2026-01-06", "--until", "2026-01-06"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (request,) = server.requests
    assert request.query["search_query"].startswith("cat:gr-qc AND submittedDate:")
    everything = read_papers(store(), get_domain("all"))["id"].to_list()
    assert everything == ["2601.00001", "2601.00002"]
    assert read_watermark(store(), get_domain("gr-qc")).newest == date(2026, 1, 6)
    assert store().exists("watermarks/gr_qc.json")


def test_oai_asks_each_set_of_a_union_once_and_stores_a_paper_in_two_once(server):
    """cs.LG+stat.ML over OAI-PMH: one listing per set; the stand-in serves every paper to
    both (as arXiv would serve 2601.00004 to both), and it is stored once, under one
    watermark for the union's query."""
    records = [oai_raw_record(paper(i, 6, cats)) for i, cats in FIELDS.items()]
    server.oai_pages = [records]
    args = ["harvest", "stat.ML+cs.LG", "--since", "2026-01-06", "--until", "2026-01-06"]
    result = runner.invoke(app, [*args, "--source", "oai"])
    assert result.exit_code == 0, result.output
    sets = [r.query.get("set") for r in server.requests]
    assert sets == ["cs:cs:LG", "stat:stat:ML"]
    assert "2 accepted" in result.output and "4 in other domains" in result.output
    union = get_domain("cs.LG+stat.ML")
    assert read_papers(store(), union)["id"].to_list() == ["2601.00004", "2601.00005"]
    assert len(store().list("corpus")) == 1
    assert read_watermark(store(), union).newest == date(2026, 1, 6)
