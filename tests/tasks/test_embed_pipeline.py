"""Incremental, sharded embedding through a real local Ray, on a local folder and on S3.

Uses the bundled MiniLM on a few dozen real abstracts: slow-ish on 2 cores, so the
module shares one Ray and keeps the paper counts small.
"""

import numpy as np
import pytest

from infra.settings import get_settings
from tasks.corpus.domains import get_domain
from tasks.corpus.ingest import ingest_source
from tasks.corpus.storage import read_papers
from tasks.embed.manifest import Namespace
from tasks.embed.run import EmbedFailedError, embed_domain, embed_shard, plan_shards
from tests.environ import environ

CS = get_domain("cs.LG")


@pytest.fixture(scope="module")
def stub():
    """An OpenAI-compatible stub; its address and a dummy key reach the Ray workers."""
    from tests.tasks.embed_stub_server import StubEmbeddingsServer

    with (
        StubEmbeddingsServer(dim=16) as server,
        environ(SAE_EMBED_API_BASE=server.url, OPENAI_API_KEY="sk-test"),
    ):
        yield server


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint, stub):
    """One local Ray for the module, started once the workers' environment is set."""
    import ray

    from infra.ray_runtime import ensure_ray

    ensure_ray(get_settings())
    yield
    ray.shutdown()


@pytest.fixture
def store(store, monkeypatch, ray_cluster):
    monkeypatch.setenv("SAE_EMBED_SHARD_SIZE", "8")
    return store


def test_embeds_once_then_only_what_is_new(store, arxiv_data):
    sample = arxiv_data / "cs_lg.jsonl.gz"
    settings = get_settings()
    ingest_source(store, CS, sample, limit=20)
    first = embed_domain(store, CS, settings=settings)
    assert (first.embedded, first.already, first.shards, first.remaining) == (20, 0, 3, 0)

    again = embed_domain(store, CS, settings=settings)
    assert (again.embedded, again.already, again.shards) == (0, 20, 0)

    ingest_source(store, CS, sample, limit=25)
    more = embed_domain(store, CS, settings=settings)
    assert (more.embedded, more.already, more.shards) == (5, 20, 1)

    ns = Namespace(store, first.embedder)
    ids, x = ns.load()
    assert ids == read_papers(store, CS)["id"].to_list() and x.shape == (25, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    assert ns.read_manifest().height == 25 and len(ns.parts()) == 4

    # The vectors are the embedder's, for the paper's own text, whatever shard it was in.
    from tasks.embed.embedders import make_embedder, paper_text

    papers = read_papers(store, CS).head(3)
    direct = make_embedder("minilm").embed(
        [paper_text(t, a) for t, a in zip(papers["title"], papers["abstract"], strict=True)]
    )
    assert (np.sum(direct * x[:3], axis=1) > 0.999).all()


def test_a_paper_is_embedded_once_across_every_domain_it_is_in(store, arxiv_data):
    """After cs.LG, its cross-lists in cs.CV and stat.ML are embedded already; a union
    embeds only what none of its parts had."""
    ingest_source(store, CS, arxiv_data / "cs_lg.jsonl.gz", limit=80)
    lg = embed_domain(store, CS, settings=get_settings())
    cv = embed_domain(store, get_domain("cs.CV"), settings=get_settings())
    union = embed_domain(store, get_domain("cs.CV+stat.ML"), settings=get_settings())
    n_cv = read_papers(store, get_domain("cs.CV")).height
    assert lg.embedded == 80 and 0 < n_cv < 80
    assert (cv.embedded, cv.already, cv.shards, cv.papers) == (0, n_cv, 0, n_cv)
    assert (union.embedded, union.shards) == (0, 0)
    assert Namespace(store, lg.embedder).read_manifest()["id"].n_unique() == 80


def test_limit_embeds_part_and_leaves_the_rest_for_the_next_run(store, arxiv_data):
    ingest_source(store, CS, arxiv_data / "cs_lg.jsonl.gz", limit=12)
    first = embed_domain(store, CS, settings=get_settings(), limit=5)
    assert (first.embedded, first.remaining) == (5, 7)
    second = embed_domain(store, CS, settings=get_settings())
    assert (second.embedded, second.already) == (7, 5)


def test_a_part_written_before_a_crash_is_adopted_not_redone(store, arxiv_data):
    settings = get_settings()
    ingest_source(store, CS, arxiv_data / "cs_lg.jsonl.gz", limit=10)
    from tasks.embed.embedders import embedder_name
    from tasks.embed.run import paper_texts, pending_papers

    name = embedder_name("minilm")
    ns = Namespace(store, name)
    texts = paper_texts(read_papers(store, CS))
    shard = plan_shards(pending_papers(texts, ns.read_manifest()), 8, name)[0]
    # The worker finished its part, then the driver died before recording it.
    embed_shard(store.root, store.storage_options, name, "minilm", "cpu", shard)
    report = embed_domain(store, CS, settings=settings)
    assert (report.adopted, report.embedded) == (8, 2)
    assert ns.read_manifest()["id"].n_unique() == 10


def test_another_embedder_writes_to_its_own_namespace(store, arxiv_data):
    from tasks.embed.local import bundled_minilm_path

    ingest_source(store, CS, arxiv_data / "cs_lg.jsonl.gz", limit=6)
    minilm = embed_domain(store, CS, settings=get_settings())
    other = embed_domain(store, CS, settings=get_settings(), spec=f"st:{bundled_minilm_path()}")
    assert other.embedder != minilm.embedder and other.namespace != minilm.namespace
    assert (minilm.embedded, other.embedded) == (6, 6)
    assert Namespace(store, minilm.embedder).read_manifest().height == 6


def test_empty_corpus_is_named(store):
    from tasks.embed.run import EmptyCorpusError

    with pytest.raises(EmptyCorpusError, match=r"sae ingest cs\.LG"):
        embed_domain(store, CS, settings=get_settings())


def test_nan_vectors_fail_the_shard_and_record_nothing(store, arxiv_data, stub):
    ingest_source(store, CS, arxiv_data / "cs_lg.jsonl.gz", limit=10)

    def poison(payload):
        payload["data"][0]["embedding"][0] = float("nan")
        return payload

    stub.mutate = poison
    try:
        with pytest.raises(EmbedFailedError, match=r"2 of 2 shard\(s\) failed.*NaN"):
            embed_domain(store, CS, settings=get_settings(), spec="openai:stub-model")
    finally:
        stub.mutate = None
    ns = Namespace(store, "openai-stub-model")
    assert ns.read_manifest().is_empty() and ns.parts() == []
    # Once the endpoint behaves, the rerun embeds everything, exactly once.
    report = embed_domain(store, CS, settings=get_settings(), spec="openai:stub-model")
    assert report.embedded == 10 and ns.read_manifest()["id"].n_unique() == 10


def test_sae_embed_command(store, arxiv_data):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    ingest_source(store, CS, arxiv_data / "cs_lg.jsonl.gz", limit=9)
    result = runner.invoke(app, ["embed", "cs.LG", "--limit", "4"])
    assert result.exit_code == 0, result.output
    assert "4 embedded" in result.output and "5 left" in result.output
    assert f"vectors: {store.root}/embeddings/minilm-l6-v2\n" in result.output
    result = runner.invoke(app, ["embed", "cs_lg"])
    assert result.exit_code == 0, result.output
    assert "5 embedded" in result.output and "4 already embedded" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["embed", "astro-ph"], "no papers of astro-ph under"),
        (["embed", "cs.LG", "--embedder", "word2vec"], "unknown embedder spec 'word2vec'"),
        (["embed", "hep_thh"], "unknown domain 'hep_thh': did you mean hep-th?"),
    ],
)
def test_sae_embed_refuses_with_the_problem_named(args, message, store, arxiv_data):
    from typer.testing import CliRunner

    from flows.cli import app

    ingest_source(store, CS, arxiv_data / "cs_lg.jsonl.gz", limit=3)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
