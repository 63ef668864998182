"""The sweep end to end: real Prefect server, local Ray, MLflow sqlite, the shared sample."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.search.limits import MAX_STRENGTH
from tests.environ import environ, thread_in_context
from tests.flows.sweeps import embedded_cs_lg, ray_reporting_to
from tests.ray_procs import task_worker_pids

CS = get_domain("cs.LG")
SAMPLE = 240
GRID = dict(k=[4, 8], n_latents=[32, 64], epochs=3, batch_size=32, lr=1e-3)
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_for_module(prefect_api, s3_endpoint):
    """A local Ray whose workers report task runs to the session's Prefect server (and
    have the S3 test keys in their environment)."""
    with ray_reporting_to(prefect_api):
        yield


@pytest.fixture(scope="module")
def embedded_template(tmp_path_factory, arxiv_data, ray_for_module):
    """A store with SAMPLE cs.LG papers ingested and embedded once for the module."""
    return embedded_cs_lg(tmp_path_factory.mktemp("sweep_template"), arxiv_data, SAMPLE)


@pytest.fixture
def sweep_store(embedded_template, prefect_env):
    settings = get_settings()
    shutil.copytree(embedded_template, settings.store)
    return Store.from_settings(settings)


def _sweep(**overrides):
    # The flow itself, in this process: the CLI around it is tested for its exits below.
    from flows.sweep import sweep
    from tasks.sweep.config import SweepParams

    return sweep(SweepParams(**{"domains": ["cs.LG"], **GRID, **overrides}))


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(get_settings().tracking_uri)


def _cell_runs(client, sweep_id=None):
    exp = client.get_experiment_by_name("arxiv-sae/cs.LG")
    query = "tags.run_kind = 'cell'" + (f" and tags.sweep_id = '{sweep_id}'" if sweep_id else "")
    return client.search_runs([exp.experiment_id], filter_string=query)


def test_sweep_trains_records_and_a_rerun_trains_nothing(sweep_store):
    import mlflow

    from sae.config import RunInfo, SAEConfig, TrainConfig
    from sae.model import TopKSAE
    from sae.trainer import PackTrainer
    from tasks.embed.snapshot import load_snapshot, snapshot_by_id

    (result,) = _sweep()
    assert not result.failed and len(result.cells) == 4 and result.champion

    client = _client()
    runs = _cell_runs(client)
    assert len(runs) == 4
    sweep_id = runs[0].data.tags["sweep_id"]
    snap_id = runs[0].data.tags["data_snapshot"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["run_kind"] == "sweep" and parent.info.status == "FINISHED"
    assert len(parent.data.tags["git_commit"]) >= 40  # provenance; not in the sweep id
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for tag in ("sweep_id", "domain", "data_snapshot", "embedder", "code_version"):
            assert run.data.tags[tag] == parent.data.tags[tag]
        assert {"k", "n_latents", "batch_size", "lr", "epochs", "d_in", "embedder"} <= set(
            run.data.params
        )
        assert {"nmse", "log_feature_density", "act_mean", "dead_fraction", "auxk_loss"} <= set(
            run.data.metrics
        )
        assert {"importance_exponent", "importance_r2"} <= set(run.data.metrics)
        curve = client.get_metric_history(run.info.run_id, "train_nmse")
        assert len(curve) >= 2 and len({m.step for m in curve}) == len(curve)
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/nmse_vs_k.png", "plots/feature_density.png", "plots/training_nmse.png"} <= plots
    assert {"plots/importance.png", "plots/pruning.png", "plots/retrieval_vs_k.png"} <= plots

    # The sweep's cell equals the same cell trained directly on the snapshot's rows.
    snap = snapshot_by_id(sweep_store, CS, parents_embedder(parent), snap_id)
    x_train, x_eval = load_snapshot(sweep_store, snap)
    ref = PackTrainer(
        [SAEConfig(d_in=x_train.shape[1], n_latents=64, k=8)],
        TrainConfig(batch_size=32, lr=1e-3, epochs=3, log_every_steps=10),
        run=RunInfo(domain="cs.LG"),
    ).fit(torch.from_numpy(x_train), torch.from_numpy(x_eval))[0]
    folder = f"{get_settings().store}/sae/{sweep_id}/csLG_8_64_32"
    stored = TopKSAE.load(folder)
    run = next(r for r in runs if r.data.params["k"] == "8" and r.data.params["n_latents"] == "64")
    assert run.data.metrics["nmse"] == pytest.approx(ref.metrics.nmse, rel=1e-4)
    # Retrieval fidelity: held-out papers searched among the training papers.
    from sae.retrieval import retrieval_fidelity

    fidelity = retrieval_fidelity(stored, x_eval, x_train).as_dict()
    for name, value in fidelity.items():
        # Other threads may sum in another order: a near-tie may flip, nothing more.
        assert run.data.metrics[name] == pytest.approx(value, abs=0.01), name
    assert 0 < fidelity["retrieval_recall_at_10"] <= 1

    # One registered model per cell; exactly one champion; both loaders give the weights.
    versions = client.search_model_versions("name LIKE 'sae-cs.LG-k%'")
    assert sorted(v.name for v in versions) == sorted(
        f"sae-cs.LG-k{k}-n{n}" for k in (4, 8) for n in (32, 64)
    )
    champions = [m for m in client.search_registered_models() if "champion" in (m.aliases or {})]
    assert len(champions) == 1
    loaded = mlflow.pytorch.load_model("models:/sae-cs.LG-k8-n64/1")
    assert torch.equal(loaded.W_enc, stored.W_enc)
    ckpt = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoint")
    assert torch.equal(TopKSAE.load(ckpt).W_dec, stored.W_dec)

    # Prefect: the pack's task run is named by its cells; progress and results artifacts.
    names, artifacts = _prefect_records()
    assert any(n.startswith("train-k") and "-n" in n for n in names), names
    assert {"log-k4-n32", "log-k8-n64"} <= set(names)
    assert {"progress", "markdown"} <= {a.type for a in artifacts}
    # The pack's task recorded its step from the Ray worker (what the terminal shows).
    from tasks.sweep.pack_progress import PackStep

    steps = [PackStep.parse(a.description) for a in artifacts if a.type == "progress"]
    total = 3 * (snap.n_train // 32)
    assert any(s and s.step == s.total == total and s.train_nmse > 0 for s in steps), steps

    # `sae runs` shows the four cells and the champion.
    table = runner.invoke(app, ["runs", "--sweep", sweep_id])
    assert table.exit_code == 0, table.output
    assert table.output.count("| cs.LG") == 4 and "*" in table.output

    # An attempt that died half way through logging a cell left a run without the
    # `complete` tag: the rerun deletes it instead of adding a fifth.
    half = client.create_run(
        parent.info.experiment_id,
        tags={**{t: parent.data.tags[t] for t in ("sweep_id", "domain")}, "run_kind": "cell",
              "cell": "csLG_4_32_32", "mlflow.parentRunId": parent.info.run_id},
    )  # fmt: skip

    # A rerun, spelling the domain another way: the same sweep, experiment, cells and
    # models, so nothing retrained, no new run, no new model version.
    states = sorted(sweep_store.list(f"sae/{sweep_id}", "*/train_state.pt"))
    mtimes = [os.path.getmtime(f"{get_settings().store}/{p}") for p in states]
    (again,) = _sweep(domains=["cs_lg"])
    assert again.domain == "cs.LG" and again.sweep_id == sweep_id
    assert again.cells == result.cells and again.champion == result.champion
    assert [os.path.getmtime(f"{get_settings().store}/{p}") for p in states] == mtimes
    assert len(_cell_runs(client)) == 4
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    assert len(client.search_model_versions("name LIKE 'sae-cs.LG-k%'")) == 4


def _prefect_records():
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(limit=200)
            return [r.name for r in runs], await client.read_artifacts(limit=200)

    return asyncio.run(read())


def parents_embedder(parent) -> str:
    return parent.data.tags["embedder"]


# The default 300 s can go to Ray and embedding alone on a loaded machine.
@pytest.mark.timeout(1200)
def test_a_worker_killed_mid_pack_is_retried_and_resumes_from_its_checkpoint(sweep_store):
    import signal
    import time

    from sae.config import RunInfo, SAEConfig, TrainConfig
    from sae.model import TopKSAE
    from sae.trainer import PackTrainer
    from tasks.embed.snapshot import load_snapshot

    # 50 epochs of 7 steps, a checkpoint after each: seconds between the first checkpoint
    # and the end, against a kill that follows the first within a 50 ms poll.
    params = dict(k=[8], n_latents=[1024], epochs=50, checkpoint_every_s=0)
    outcome: dict = {}
    thread = thread_in_context(lambda: outcome.update(r=_sweep(**params)))
    killed = None
    while killed is None and thread.is_alive():
        states = sweep_store.list("sae", "*/csLG_8_1024_32/train_state.pt")
        done = sweep_store.list("sae", "*/csLG_8_1024_32/metrics.json")
        pids = task_worker_pids("train-pack")
        if states and not done and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    thread.join()
    assert killed is not None, "the pack finished before it could be killed: make it longer"
    (result,) = outcome["r"]
    assert not result.failed and len(result.cells) == 1

    # Exact resume: the killed-and-resumed cell equals the cell trained without a break.
    from tasks.embed.snapshot import snapshot_by_id

    snap = snapshot_by_id(sweep_store, CS, "minilm-l6-v2", result.data_snapshot)
    x_train, x_eval = load_snapshot(sweep_store, snap)
    ref = PackTrainer(
        [SAEConfig(d_in=x_train.shape[1], n_latents=1024, k=8)],
        TrainConfig(batch_size=32, lr=1e-3, epochs=params["epochs"], log_every_steps=10),
        run=RunInfo(domain="cs.LG"),
    )
    ref.fit(torch.from_numpy(x_train), torch.from_numpy(x_eval))
    stored = TopKSAE.load(f"{get_settings().store}/sae/{result.sweep_id}/csLG_8_1024_32")
    torch.testing.assert_close(stored.W_dec, ref.model("csLG_8_1024_32").W_dec)


def test_other_fields_of_the_sample_sweep_without_embedding_anything(sweep_store):
    """cs.CV and a union (cs.CL+cs.AI) over the cs.LG sample: every paper has its vector
    already, so nothing is embedded; each domain trains on its own snapshot, under its
    own names."""
    from tasks.corpus.storage import read_papers
    from tasks.embed.manifest import Namespace

    ns = Namespace(sweep_store, "minilm-l6-v2")
    parts, embedded = ns.parts(), ns.read_manifest().height
    results = _sweep(domains=["cs.CV", "cs.CL+cs.AI"], k=[4], n_latents=[32])
    assert ns.parts() == parts and ns.read_manifest().height == embedded
    expected = [("cs.CV", "cs_cv", "csCV"), ("cs.AI+cs.CL", "cs_ai+cs_cl", "csAI+csCL")]
    client = _client()
    for r, (name, slug, prefix) in zip(results, expected, strict=True):
        assert r.domain == name and not r.failed
        assert [c["cell"] for c in r.cells] == [f"{prefix}_4_32_32"]
        assert r.data_snapshot.startswith(f"{slug}-") and r.sweep_id.startswith(f"{slug}-")
        rows = sweep_store.read_parquet(f"{ns.snapshot_dir(slug)}/{r.data_snapshot}.parquet")
        papers = read_papers(sweep_store, get_domain(name), columns=["id"])
        assert rows["id"].to_list() == papers["id"].to_list() and 0 < rows.height < SAMPLE
        assert client.get_experiment_by_name(f"arxiv-sae/{name}") is not None
        assert client.get_registered_model(f"sae-{name}-k4-n32").aliases == {"champion": 1}


def test_the_sweep_with_the_store_on_s3_and_an_mlflow_server(
    embedded_template, s3_store_root, s3_endpoint, prefect_env, monkeypatch
):
    """Checkpoints, plots and models all land in the S3 store; models load back over HTTP."""
    import mlflow

    from infra.local_stack import start_mlflow_server
    from sae.config import parse_cell_name
    from sae.model import TopKSAE

    store = Store.from_settings(get_settings())
    for path in sorted(embedded_template.rglob("*")):
        if path.is_file():
            store.write_bytes(path.relative_to(embedded_template).as_posix(), path.read_bytes())
    server = start_mlflow_server(get_settings()).wait_healthy(180)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    try:
        (result,) = _sweep(k=[4], n_latents=[32, 64])
        assert not result.failed and len(result.cells) == 2

        cell = f"sae/{result.sweep_id}/csLG_4_64_32"
        for name in ("model.safetensors", "cfg.json", "metrics.json", "history.json"):
            assert store.exists(f"{cell}/{name}"), name
        artifacts = store.list("mlflow/cs_lg", "**")
        assert any(a.endswith("plots/nmse_vs_k.png") for a in artifacts)
        assert any(a.endswith("MLmodel") for a in artifacts)
        assert not any(".tmp" in a for a in store.list("sae", "**"))

        mlflow.set_tracking_uri(server.url)
        _, k, n, _ = parse_cell_name(result.champion)
        champion = mlflow.pytorch.load_model(f"models:/sae-cs.LG-k{k}-n{n}@champion")
        direct = TopKSAE.load(_download(store, f"sae/{result.sweep_id}/{result.champion}"))
        assert torch.equal(champion.W_enc, direct.W_enc)
    finally:
        server.stop()


def _download(store: Store, folder: str):
    import tempfile
    from pathlib import Path

    local = Path(tempfile.mkdtemp())
    for name in ("model.safetensors", "cfg.json"):
        (local / name).write_bytes(store.read_bytes(f"{folder}/{name}"))
    return local


def test_features_of_a_sweep_and_their_lineage_after_new_papers(sweep_store):
    import json

    import numpy as np
    from mlflow.tracking import MlflowClient

    from flows.features import features
    from sae.codes import encode_matrix
    from sae.model import TopKSAE
    from tasks.embed.manifest import Namespace
    from tasks.embed.snapshot import snapshot_by_id
    from tasks.features.codes_store import read_codes
    from tasks.features.locate import FeaturesInputError
    from tasks.features.params import FeaturesParams

    (first,) = _sweep(k=[8], n_latents=[32, 64], limit=200)
    (report,) = features(FeaturesParams(domains=["cs_lg"]))
    # By default the champion and, per k, the largest n.
    assert report.sweep_id == first.sweep_id
    assert set(report.cells) == {first.champion, "csLG_8_64_32"}

    client = MlflowClient(get_settings().tracking_uri)
    runs = {r.data.tags["cell"]: r for r in _cell_runs(client, first.sweep_id)}
    parent_id = runs[first.champion].data.tags["mlflow.parentRunId"]
    for cell in report.cells:
        folder = f"sae/{first.sweep_id}/{cell}"
        model = TopKSAE.load(f"{get_settings().store}/{folder}")
        snap = snapshot_by_id(sweep_store, CS, "minilm-l6-v2", first.data_snapshot)
        ids, x = Namespace(sweep_store, "minilm-l6-v2").load(
            keys=sweep_store.read_parquet(snap.path)
        )
        # The stored codes are the model's codes of every paper of the snapshot.
        stored_ids, codes = read_codes(
            sweep_store, f"{folder}/features/codes.parquet", model.n_latents
        )
        assert stored_ids == ids and len(ids) == snap.n_train + snap.n_eval
        np.testing.assert_allclose(codes.dense(), encode_matrix(model, x).dense(), atol=1e-6)

        doc = json.loads(sweep_store.read_bytes(f"{folder}/features/features.json"))
        assert doc["cell"] == cell and doc["n_papers"] == len(ids)
        assert len(doc["features"]) == model.n_latents
        dense = codes.dense()
        for f in doc["features"]:
            col = dense[:, f["id"]]
            assert f["density"] == pytest.approx((col > 0).mean(), rel=1e-3, abs=1e-9)
            acts = [a for _, a in f["top"]]
            assert acts == sorted(acts, reverse=True)
            if acts:  # the top paper is the feature's strongest
                assert doc["papers"][f["top"][0][0]]["id"] == ids[int(col.argmax())]
        assert doc["summary"]["live_features"] == int((dense > 0).any(0).sum())
        page = sweep_store.read_bytes(f"{folder}/features/browser.html").decode()
        assert "features-data" in page and cell in page

        metrics = client.get_run(runs[cell].info.run_id).data.metrics
        assert {"label_f1_mean", "labels_scored", "families", "live_features"} <= set(metrics)
        # Labels scored by their MiniLM embedding too, the label score shown; clean features.
        embed_keys = {"label_embed_f1_mean", "label_embed_pearson_mean", "clean_share"}
        assert embed_keys <= set(metrics) and metrics["label_embed_skipped"] == 0
        assert doc["summary"]["label_score"] == "embed"
        assert all(f["f1"] == f["embed_f1"] for f in doc["features"])
        in_family = {m for fam in doc["families"] for m in fam["members"]}
        assert all(doc["features"][m]["clean"] for m in in_family)
        # The arXiv category probes: cs.CV, cs.AI and cs.CL have 50+ of the 240 papers.
        assert {p["category"] for p in doc["probes"]} == {"cs.CV", "cs.AI", "cs.CL"}
        assert metrics["probe_categories"] == 3
        for name in ("probe_single_f1_mean", "probe_f1_k1_mean", "probe_f1_k16_mean"):
            assert 0 <= metrics[name] <= 1
        assert 0 < metrics["dense_probe_f1_mean"] <= 1
    logged = {a.path for a in client.list_artifacts(parent_id, "features")}
    assert {f"features/{c}.html" for c in report.cells} <= logged
    assert "features/splitting.json" in logged and report.lineage is None
    plots = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert "plots/probes_vs_k.png" in plots
    assert "csLG_8_32_32->csLG_8_64_32" in report.splitting

    # `sae feature` prints a card of the champion from what is stored.
    card = runner.invoke(app, ["feature", "cs.LG", "3"])
    assert card.exit_code == 0, card.output
    assert card.output.startswith(f"feature 3 of {first.champion}") and "top papers:" in card.output
    missing = runner.invoke(app, ["feature", "cs.LG", "999"])
    assert missing.exit_code == 2 and "out of range" in missing.output

    _check_search(first, report.cells, ids, x)

    # A rerun reuses what is stored.
    champion_folder = f"sae/{first.sweep_id}/{first.champion}/features"
    doc_path = f"{get_settings().store}/{champion_folder}/features.json"
    mtime = os.path.getmtime(doc_path)
    again = runner.invoke(app, ["features", "cs.LG"])  # and through the command line
    assert again.exit_code == 0, again.output
    assert again.output.count("live features") == len(report.cells)
    assert os.path.getmtime(doc_path) == mtime

    # LLM labels through an OpenAI-compatible stand-in: written into the cards, cached.
    from tests.tasks.features.llm_stub_server import StubChatServer

    with (
        StubChatServer() as stub,
        environ(
            SAE_LABEL_API_BASE=stub.url, SAE_LABEL_MODEL="stub-model", SAE_LABEL_API_KEY="sk-test1"
        ),
    ):
        (llm,) = features(FeaturesParams(domains=["cs.LG"], cells=["champion"], llm_labels=3))
        asked = len(stub.requests)
        assert asked == 6  # explain + predict, three features
        doc = json.loads(sweep_store.read_bytes(f"{champion_folder}/features.json"))
        labelled = [f for f in doc["features"] if "llm" in f]
        assert len(labelled) == 3 and all(f["llm"]["label"] for f in labelled)
        densest = sorted(doc["features"], key=lambda f: -(f["density"] or 0))[:3]
        assert {f["id"] for f in labelled} == {f["id"] for f in densest}
        assert llm.cells[first.champion]["llm_labels"] == 3
        features(FeaturesParams(domains=["cs.LG"], cells=["champion"], llm_labels=3))
        assert len(stub.requests) == asked  # all three from the cache
    with pytest.raises(FeaturesInputError, match=r"no sweep abc of cs\.LG"):
        features(FeaturesParams(domains=["cs.LG"], sweep="abc"))
    with pytest.raises(FeaturesInputError, match="has no cell 'csLG_8_99_32'; it has csLG_8_32"):
        features(FeaturesParams(domains=["cs.LG"], cells=["csLG_8_99_32"]))
    missing = environ(SAE_LABEL_API_BASE="")
    with missing, pytest.raises(FeaturesInputError, match="SAE_LABEL_API_BASE"):
        features(FeaturesParams(domains=["cs.LG"], llm_labels=3))

    # New papers, a new sweep: its champion's features against the previous champion's.
    (second,) = _sweep(k=[8], n_latents=[32, 64])
    assert second.data_snapshot != first.data_snapshot
    (later,) = features(FeaturesParams(domains=["cs.LG"], cells=["champion"]))
    assert later.sweep_id == second.sweep_id and set(later.cells) == {second.champion}
    assert later.lineage["previous_champion"] == first.champion
    counts = later.lineage["counts"]
    n_new = int(second.champion.split("_")[2])
    assert counts["stable"] + counts["split"] + counts["new"] == n_new
    assert counts["stable"] > 0  # most features survive 40 more papers
    parent2 = client.get_run(_cell_runs(client, second.sweep_id)[0].data.tags["mlflow.parentRunId"])
    assert parent2.data.metrics["lineage_stable"] == counts["stable"]


def _check_search(swept, analysed, ids: list[str], x_ND) -> None:
    """`sae search` on the champion: unedited, the dense search of the snapshot with the
    query's MiniLM embedding; a raised feature is set; bad input exits 2 naming it. Then
    the one cell not ``analysed`` by `sae features`: ids without labels."""
    import json

    from flows.search_cli import search_text
    from tasks.embed.embedders import make_embedder

    query = "graph neural networks for molecules"
    plain = runner.invoke(app, ["search", query, "--top", "8", "--json"])
    assert plain.exit_code == 0, plain.output
    got = json.loads(plain.stdout)  # the logs went to stderr
    q = make_embedder("minilm", device="cpu", precision="fp32").embed([query])[0]
    scores = x_ND @ q
    want = sorted(range(len(ids)), key=lambda i: -scores[i])[:8]
    assert [h["id"] for h in got["hits"]] == [ids[i] for i in want]
    assert got["cell"] == swept.champion and not got["edited"]
    assert all(f["label"] for f in got["features"])  # labels from `sae features`

    n_latents = int(swept.champion.split("_")[2])
    absent = next(i for i in range(n_latents) if i not in {f["id"] for f in got["features"]})
    raised = runner.invoke(
        app, ["search", query, "--boost", f"{absent}={MAX_STRENGTH:g}", "--json"]
    )
    assert raised.exit_code == 0, raised.output
    feats = {f["id"]: f for f in json.loads(raised.stdout)["features"]}
    assert feats[absent]["edited"] and feats[absent]["strength"] == MAX_STRENGTH

    text = runner.invoke(app, ["search", query, "--top", "3", "--suppress", str(absent)])
    assert text.exit_code == 0 and text.output.count("https://arxiv.org/abs/") == 3
    for args, says in [
        (["search", " "], "the query is empty"),
        (["search", query, "--boost", "999=1"], "feature 999 does not exist"),
        (["search", query, "--model", "csLG_8_99_32"], "has no cell 'csLG_8_99_32'"),
        (["search", query, "--domain", "math.AG"], "math.AG"),
    ]:
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and says in refused.output, refused.output
    usage = runner.invoke(app, ["search", query, "--boost", "lots"])
    assert usage.exit_code == 2 and "ID=STRENGTH" in usage.output

    # The cells of a sweep share its papers; a cell without features searches by ids.
    from tasks.search.load import open_engine

    champion = open_engine("cs.LG")
    (unread,) = {"csLG_8_32_32", "csLG_8_64_32"} - set(analysed)
    bare = open_engine("cs.LG", unread)
    assert bare.corpus_ND is champion.corpus_ND and bare.document is None
    result = bare.search(query, {3: 2.0})
    assert [f.label for f in result.features] == [[]] * len(result.features)
    assert "sae features cs.LG" in search_text(result.as_dict(bare))
