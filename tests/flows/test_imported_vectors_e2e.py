"""Bring-your-own vectors end to end: `sae import-vectors`, then `sae sweep`, `sae
features` and `sae search` on the imported namespace, as on embedded vectors; and a
search refused, naming the embedder, when the recorded one cannot embed a query here."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tests.flows.sweeps import ray_reporting_to

CS = get_domain("cs.LG")
PAPERS = 160
SMALL = ["--k", "4", "--n", "32", "--epochs", "2", "--batch-size", "16", "--lr", "1e-3"]
API_SPEC = "openai:text-embedding-3-small"
runner = CliRunner()


@pytest.fixture
def corpus(cs_lg_head, prefect_env, monkeypatch):
    """PAPERS cs.LG papers of the shared sample in the settings' store, and a Ray whose
    workers report to the session's Prefect server; no API key in sight."""
    from tasks.corpus.ingest import ingest_source

    for key in ("OPENAI_API_KEY", "SAE_EMBED_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    store = Store.from_settings(get_settings())
    ingest_source(store, CS, cs_lg_head, limit=PAPERS)
    with ray_reporting_to(prefect_env):
        yield store


def _papers(store: Store) -> pl.DataFrame:
    from tasks.corpus.storage import read_papers

    return read_papers(store, CS, columns=["id", "title", "abstract"]).sort("id")


def _import(tmp_path, ids: list[str], x_ND: np.ndarray, spec: str) -> None:
    path = tmp_path / f"{spec.replace(':', '_')}.parquet"
    pl.DataFrame({"id": ids, "vector": [list(v) for v in x_ND]}).write_parquet(path)
    result = runner.invoke(app, ["import-vectors", "cs.LG", str(path), "--embedder", spec])
    assert result.exit_code == 0, result.output
    assert f"{len(ids)} imported" in result.output


def _sweep(spec: str) -> str:
    result = runner.invoke(app, ["sweep", "cs.LG", "--embedder", spec, *SMALL])
    assert result.exit_code == 0, result.output
    (sweep_id,) = re.findall(r"^cs\.LG: sweep (\S+), data snapshot", result.output, re.M)
    return sweep_id


def test_imported_vectors_sweep_features_and_search(corpus, tmp_path):
    from tasks.embed.embedders import make_embedder, paper_text

    papers = _papers(corpus)
    texts = [paper_text(t, a) for t, a in zip(papers["title"], papers["abstract"], strict=True)]
    # Vectors "made elsewhere" by the bundled MiniLM, so search can embed queries alike.
    x_ND = make_embedder("minilm", device="cpu").embed(texts)
    _import(tmp_path, papers["id"].to_list(), x_ND, "minilm")
    sweep_id = _sweep("minilm")

    features = runner.invoke(app, ["features", "cs.LG", "--sweep", sweep_id])
    assert features.exit_code == 0, features.output
    assert "live features" in features.output

    # A paper's own text finds that paper first: the query went through the same embedder.
    row = 7
    args = ["search", texts[row], "--sweep", sweep_id, "--json", "--in-process"]
    found = runner.invoke(app, args)
    assert found.exit_code == 0, found.output
    answer = json.loads(found.stdout)
    assert answer["has_labels"] and answer["sweep"] == sweep_id
    assert answer["hits"][0]["id"] == papers["id"][row]
    assert answer["hits"][0]["score"] > 0.99

    # Vectors of an API with no key here: the sweep runs, the search is refused with
    # exit 2 and one error line naming the embedder and why it cannot run.
    # The same papers: their snapshot id is the same, and the sweep id must still differ
    # (it names the embedder), or the sweep above would be found finished and reused.
    some = papers["id"].to_list()
    _import(tmp_path, some, np.random.default_rng(0).normal(size=(len(some), 16)), API_SPEC)
    api_sweep = _sweep(API_SPEC)
    assert api_sweep != sweep_id
    refused = runner.invoke(app, ["search", "graph networks", "--sweep", api_sweep, "--in-process"])
    assert refused.exit_code == 2, refused.output
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert API_SPEC in error and "no API key" in error and "import-vectors" in error, error
