"""What each domain holds (`sae domains`), and the warning before embedding all of arXiv
on a CPU."""

from datetime import date

import polars as pl
import pytest
from typer.testing import CliRunner

import tasks.corpus.domains as domains
from flows.cli import app
from tasks.census import cpu_embedding_warning, domain_census
from tasks.corpus.domains import get_domain
from tasks.corpus.records import PAPER_SCHEMA
from tasks.corpus.storage import write_papers
from tasks.embed.manifest import Namespace, manifest_rows

PAPERS = {
    "2601.00001": ["cs.LG", "cs.CV"],
    "2601.00002": ["cs.CV"],
    "2601.00003": ["astro-ph.GA", "gr-qc"],
    "2601.00004": ["astro-ph"],  # a pre-2009 style bare archive code
    "2601.00005": ["stat.ML", "cs.LG"],
}


def fill(store, embedded=("2601.00001", "2601.00003")):
    rows = [
        {"id": i, "version": 1, "title": i, "abstract": i, "categories": cats,
         "published": date(2026, 1, 2), "source": "t"}
        for i, cats in PAPERS.items()
    ]  # fmt: skip
    write_papers(store, pl.DataFrame(rows, schema=PAPER_SCHEMA))
    Namespace(store, "toy").append_manifest(
        manifest_rows(list(embedded), ["s"] * len(embedded), "part-a.parquet", "r")
    )


def test_every_domain_is_counted_once_per_paper(store):
    fill(store)
    counts = {c.domain.name: (c.papers, c.embedded) for c in domain_census(store, "toy")}
    assert len(counts) == len(domains.known_domains()) == 167
    assert counts["cs.LG"] == (2, 1) and counts["cs.CV"] == (2, 1)
    assert counts["cs"] == (3, 1)  # 2601.00001 is in two cs categories, counted once
    assert counts["astro-ph"] == (2, 1) and counts["astro-ph.GA"] == (1, 1)
    assert counts["gr-qc"] == (1, 1) and counts["hep-th"] == (0, 0)
    assert counts["stat"] == (1, 0) and counts["all"] == (5, 2)


def test_sae_domains_lists_them_with_the_stores_counts(store):
    fill(store)
    result = CliRunner().invoke(app, ["domains", "--held", "--embedder", "minilm"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1:3] for line in result.output.splitlines()[1:]}
    assert lines["cs.LG"] == ["2", "0"] and lines["all"] == ["5", "0"]  # no minilm vectors
    assert "hep-th" not in lines and "Machine Learning" in result.output
    everything = CliRunner().invoke(app, ["domains"])
    assert everything.exit_code == 0 and len(everything.output.splitlines()) == 1 + 167


def test_all_on_a_cpu_warns_with_the_papers_and_the_time_and_nothing_else_does(store):
    fill(store)
    warn = cpu_embedding_warning(store, get_domain("all"), "toy", cores=2, gpu=False, cluster=False)
    assert "5 papers in the corpus, 3 without a vector" in warn
    assert "about 0.0 h" in warn and "15 papers/s" in warn and "--limit" in warn
    for domain, gpu, cluster in (
        ("cs.LG", False, False),
        ("all", True, False),
        ("all", False, True),
    ):
        assert (
            cpu_embedding_warning(
                store, get_domain(domain), "toy", cores=2, gpu=gpu, cluster=cluster
            )
            is None
        )


@pytest.fixture
def broken_taxonomy(tmp_path, monkeypatch):
    good = domains._SHIPPED.read_text().splitlines()
    broken = tmp_path / "taxonomy.tsv"
    broken.write_text("\n".join([*good[:12], "category\tcs.QQ\tno archive column", *good[12:]]))
    monkeypatch.setattr(domains, "_SHIPPED", broken)
    domains._shipped_taxonomy.cache_clear()
    yield broken
    domains._shipped_taxonomy.cache_clear()


def test_a_taxonomy_that_does_not_parse_stops_every_command_naming_its_line(broken_taxonomy):
    result = CliRunner().invoke(app, ["domains"])
    assert result.exit_code == 2
    assert f"{broken_taxonomy} line 13" in result.output
