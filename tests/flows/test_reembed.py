"""The re-embed flow against a local arXiv stand-in, a real Prefect server, a local Ray and
an OpenAI-compatible stub embedder: new papers in, watermark moved last, faults named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.corpus.storage import read_papers, read_watermark, write_watermark
from tasks.embed.manifest import Namespace
from tests.environ import environ, thread_in_context
from tests.ray_procs import task_worker_pids
from tests.tasks.arxiv_server import MALFORMED, ArxivServer, Paper, Reply

CS = get_domain("cs.LG")
UNTIL = date(2026, 1, 10)
EMBEDDER = "openai:stub-model"
NAMESPACE = "openai-stub-model"
REPO = Path(__file__).resolve().parents[2]
#: `sae reembed`.
CLI = [sys.executable, "-m", "flows.cli", "reembed", "cs.LG", "--until", "2026-01-10"]
#: Only a safety net against a hang: on a loaded machine a run that starts its own Ray
#: and Prefect client can take minutes, and the verdicts never depend on how long.
CEILING_S = 540


def paper(i: int, day: int, **kwargs) -> Paper:
    return Paper(
        f"2601.{i:05d}",
        title=f"Sparse features of paper {i}",
        abstract=f"Paper {i} studies sparse autoencoders on dense text embeddings. " * 3,
        submitted=datetime(2026, 1, day, 9, 0, tzinfo=UTC),
        **kwargs,
    )


class GatedServer(ArxivServer):
    """Records each request (``requested`` is set at the first), then holds its answer
    until ``gate`` is set."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.requested = threading.Event()

    def answer(self, request):
        reply = super().answer(request)
        self.requested.set()
        self.gate.wait(timeout=CEILING_S)
        return reply


@pytest.fixture(scope="module")
def module_env(tmp_path_factory):
    """An embeddings stub and one MLflow database for the module (a new sqlite file costs
    a migration), set in the environment before Ray starts, so its workers see them."""
    from tests.tasks.embed_stub_server import StubEmbeddingsServer

    db = tmp_path_factory.mktemp("reembed_mlflow") / "mlflow.db"
    with (
        StubEmbeddingsServer(dim=16) as stub,
        environ(
            SAE_EMBED_API_BASE=stub.url,
            OPENAI_API_KEY="sk-test",
            SAE_MLFLOW_TRACKING_URI=f"sqlite:///{db}",
        ),
    ):
        yield stub


@pytest.fixture(scope="module")
def ray_for_module(prefect_api, module_env):
    """One local Ray for the module, started once its workers' environment is set."""
    import ray

    from infra.ray_runtime import ensure_ray

    with environ(PREFECT_API_URL=prefect_api):
        ensure_ray(get_settings())
        yield
        ray.shutdown()
        _drain_prefect_logs()


def _drain_prefect_logs() -> None:
    """Sends the logs and events still queued while the session's server is up: at
    interpreter exit it is gone, and Prefect would retry against it for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10, at_exit=False)


@pytest.fixture
def server(monkeypatch, ray_for_module, prefect_env):
    with GatedServer() as running:
        monkeypatch.setenv("SAE_HARVEST_API_URL", running.api_url)
        monkeypatch.setenv("SAE_HARVEST_OAI_URL", running.oai_url)
        monkeypatch.setenv("SAE_HARVEST_MIN_INTERVAL_S", "0")
        monkeypatch.setenv("SAE_EMBEDDER", EMBEDDER)
        monkeypatch.setenv("SAE_EMBED_SHARD_SIZE", "4")
        yield running
        running.gate.set()


def run_cli() -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=CEILING_S
    )


def store() -> Store:
    return Store.from_settings(get_settings())


def run(**overrides):
    from flows.reembed import reembed
    from tasks.reembed import ReembedParams

    return reembed(ReembedParams(**{"domains": ["cs.LG"], "until": UNTIL, **overrides}))


def manifest_ids(namespace: str = NAMESPACE) -> list[str]:
    return sorted(Namespace(store(), namespace).read_manifest()["id"].to_list())


def mlflow_run(run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(get_settings().tracking_uri).get_run(run_id)


def test_picks_up_exactly_the_new_papers_then_moves_the_watermark(server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    first_ids = [f"2601.{i:05d}" for i in range(5)]
    server.api_entries = [paper(i, 5 + i % 3) for i in range(5)]
    server.api_entries += [
        Paper("2601.09001", abstract="Too short.", submitted=datetime(2026, 1, 6, tzinfo=UTC)),
        paper(9002, 6, categories=("math.CO",)),  # not asked for: the API leaves it out
    ]
    first = run()
    assert first["status"] == "ok"
    counts = ("new", "duplicate", "rejected", "other_domain", "embedded")
    assert [first[k] for k in counts] == [5, 0, 1, 0, 5]
    assert (first["since"], first["watermark"]) == ("2026-01-03", "2026-01-07")
    assert manifest_ids() == first_ids
    assert read_watermark(store(), CS).newest == date(2026, 1, 7)

    # The summary, in MLflow and as a Prefect artifact.
    tracked = mlflow_run(first["mlflow_run_id"])
    assert tracked.data.tags["run_kind"] == "reembed" and tracked.data.tags["domain"] == "cs.LG"
    assert {k: tracked.data.metrics[k] for k in ("new", "duplicate", "rejected", "embedded")} == {
        "new": 5.0,
        "duplicate": 0.0,
        "rejected": 1.0,
        "embedded": 5.0,
    }
    assert tracked.data.params["since"] == "2026-01-03"
    assert tracked.data.params["source"] == "api" and tracked.data.params["embedder"] == NAMESPACE
    assert tracked.info.status == "FINISHED"
    with get_client(sync_client=True) as client:
        flow_run_id = tracked.data.tags["prefect_flow_run_id"]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    markdown = [a for a in artifacts if a.key == "reembed-cs-lg"]
    assert markdown and "| 5 | 0 | 1 | 0 | 5 |" in markdown[0].data

    # Two more papers: the next run starts from the watermark less the overlap, embeds
    # only those two and moves the watermark to the newest.
    server.api_entries += [paper(5, 8), paper(6, 9)]
    second = run()
    query = server.requests[-1].query["search_query"]
    assert "submittedDate:[202601050000 TO 202601102359]" in query
    assert (second["new"], second["duplicate"], second["embedded"]) == (2, 5, 2)
    assert second["watermark"] == "2026-01-09"
    assert manifest_ids() == [*first_ids, "2601.00005", "2601.00006"]
    manifest = Namespace(store(), NAMESPACE).read_manifest()
    assert manifest["id"].n_unique() == manifest.height == 7

    # Nothing new: nothing embedded, the watermark stays.
    third = run()
    assert (third["new"], third["embedded"], third["watermark"]) == (0, 0, "2026-01-09")
    assert third["moved"] is False
    assert Namespace(store(), NAMESPACE).read_manifest().height == 7


def _unwritable_folder() -> str | None:
    """A folder nobody can create files in, root included (a pseudo-filesystem)."""
    for folder in ("/sys/kernel", "/proc"):
        if os.path.isdir(folder):
            try:
                open(os.path.join(folder, ".sae-probe"), "wb").close()
            except OSError:
                return folder
            os.unlink(os.path.join(folder, ".sae-probe"))
    return None


def test_a_failed_watermark_write_after_embedding_leaves_it_and_a_rerun_finishes(server):
    from infra.store import StoreError

    folder = _unwritable_folder()
    if folder is None:
        pytest.skip("no unwritable pseudo-filesystem folder on this machine")
    server.api_entries = [paper(i, 5 + i) for i in range(3)]
    root = Path(get_settings().store)
    root.mkdir(parents=True)
    # The watermark folder cannot take a new file (as a read-only mount or a denied PUT):
    # reads find no watermark, the write at the end fails, after the embeddings.
    (root / "watermarks").symlink_to(folder)
    with pytest.raises(StoreError, match=r"cannot write .*watermarks/cs_lg\.json"):
        run()
    (root / "watermarks").unlink()
    assert read_watermark(store(), CS) is None
    assert manifest_ids() == ["2601.00000", "2601.00001", "2601.00002"]  # durable already

    again = run()
    assert (again["new"], again["duplicate"], again["embedded"]) == (0, 3, 0)
    assert again["watermark"] == "2026-01-07"
    manifest = Namespace(store(), NAMESPACE).read_manifest()
    assert manifest["id"].n_unique() == manifest.height == 3
    assert len(store().list("corpus")) == 1  # the rerun wrote no second copy

    failed = [r for r in _reembed_runs() if r.data.tags.get("status") == "failed"]
    assert any("watermarks/cs_lg.json" in r.data.tags.get("error", "") for r in failed)


def _reembed_runs():
    from mlflow.tracking import MlflowClient

    client = MlflowClient(get_settings().tracking_uri)
    exp = client.get_experiment_by_name("arxiv-sae/cs.LG")
    return client.search_runs([exp.experiment_id], "tags.run_kind = 'reembed'")


def test_503_is_retried_then_fails_and_the_watermark_stays(server):
    from tasks.corpus.harvest import HarvestError

    write_watermark(store(), CS, date(2026, 1, 6))
    server.api_entries = [paper(1, 7)]
    server.fail(*[Reply.error(503, retry_after="0")] * 6)
    with pytest.raises(HarvestError, match=r"gave up after 6 attempts; last failure: HTTP 503"):
        run()
    assert len(server.requests) == 6
    assert read_watermark(store(), CS).newest == date(2026, 1, 6)
    assert manifest_ids() == []


def test_malformed_xml_is_a_clear_error_and_the_watermark_stays(server):
    from tasks.corpus.harvest import HarvestError

    write_watermark(store(), CS, date(2026, 1, 6))
    server.api_entries = [paper(1, 7)]
    # A flaky endpoint whose last answer is cut off mid-element (the retries are quick).
    server.fail(*[Reply.error(503, retry_after="0")] * 5, Reply.xml(MALFORMED))
    with pytest.raises(HarvestError, match=r"6 attempts; last failure: malformed XML"):
        run()
    assert read_watermark(store(), CS).newest == date(2026, 1, 6)
    assert read_papers(store(), CS).is_empty()


def test_an_empty_window_is_a_quiet_success(server):
    result = run(since=date(2026, 1, 8))
    assert result["status"] == "ok"
    assert (result["new"], result["embedded"], result["watermark"]) == (0, 0, None)
    assert read_watermark(store(), CS) is None


@pytest.mark.parametrize("kind", ["corrupt", "future"])
def test_a_corrupt_or_future_watermark_names_the_file(server, kind):
    from tasks.corpus.storage import WatermarkError

    s = store()
    if kind == "corrupt":
        s.write_bytes("watermarks/cs_lg.json", b'{"domain": "cs.LG", "newest": "2026-01-')
        match = r"corrupt"
    else:
        ahead = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
        mark = {"domain": "cs.LG", "newest": ahead, "updated_at": ""}
        s.write_json("watermarks/cs_lg.json", mark)
        match = r"in the future"
    before = s.read_bytes("watermarks/cs_lg.json")
    with pytest.raises(WatermarkError, match=match) as info:
        run(until=None)
    assert s.uri("watermarks/cs_lg.json") in str(info.value)
    assert server.requests == []  # nothing was asked of arXiv
    assert s.read_bytes("watermarks/cs_lg.json") == before


@pytest.mark.timeout(3 * CEILING_S)
def test_two_runs_at_once_the_second_exits_naming_the_first(server):
    """The first run holds the lease while arXiv is slow; `sae reembed` started meanwhile
    exits 3 without asking arXiv anything; the first then finishes normally."""
    server.api_entries = [paper(i, 6) for i in range(2)]
    server.gate.clear()
    outcome: dict = {}

    def first_run() -> None:
        try:
            outcome["result"] = run()
        except Exception as exc:
            outcome["error"] = exc

    thread = thread_in_context(first_run)
    try:
        # However slow the machine: the first run's request, or its end without one.
        while not server.requested.wait(0.1):
            assert thread.is_alive(), f"the first run ended before asking arXiv: {outcome}"
        lease = json.loads(store().read_bytes("locks/reembed-cs_lg.json"))
        assert lease["domain"] == "cs.LG" and lease["pid"] == os.getpid()

        second = run_cli()
        assert second.returncode == 3, second.stdout + second.stderr
        assert "another re-embed of cs.LG is running" in second.stderr
        assert "locks/reembed-cs_lg.json" in second.stderr and lease["owner"] in second.stderr
        assert len(server.requests) == 1  # the second run never harvested
    finally:
        server.gate.set()
        thread.join(CEILING_S)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["new"] == 2 and outcome["result"]["embedded"] == 2
    assert not store().exists("locks/reembed-cs_lg.json")  # released

    # Once the first is done, the command runs: nothing new, exit 0 and the summary.
    third = run_cli()
    assert third.returncode == 0, third.stdout + third.stderr
    assert "cs.LG (arXiv api 2026-01-04..2026-01-10): 0 new, 2 duplicate" in third.stdout
    assert "watermark: 2026-01-06 (unchanged)" in third.stdout
    assert "MLflow run: " in third.stdout


@pytest.mark.timeout(2 * CEILING_S)
def test_a_shard_worker_killed_mid_embedding_is_retried_without_duplicates(server, module_env):
    """SIGKILL the worker while its shard waits on the embeddings endpoint: Ray runs the
    shard again, every paper is embedded once, and no part is left unrecorded."""
    import signal

    stub = module_env
    server.api_entries = [paper(i, 5 + i % 2) for i in range(10)]  # 3 shards of <= 4
    asked_before = len(stub.requests)
    stub.gate.clear()
    outcome: dict = {}
    thread = thread_in_context(lambda: outcome.update(result=run()))
    killed = None
    try:
        while killed is None and thread.is_alive():
            pids = task_worker_pids("embed_shard")
            if len(stub.requests) > asked_before and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            time.sleep(0.05)
    finally:
        stub.gate.set()
        thread.join(CEILING_S)
    assert killed is not None, "no shard was caught waiting on the endpoint"
    result = outcome["result"]
    assert result["status"] == "ok" and (result["new"], result["embedded"]) == (10, 10)
    ns = Namespace(store(), NAMESPACE)
    manifest = ns.read_manifest()
    assert sorted(manifest["id"]) == [f"2601.{i:05d}" for i in range(10)]
    assert manifest["id"].n_unique() == manifest.height
    assert set(manifest["part"]) == set(ns.parts())
    assert len(stub.requests) - asked_before >= 4  # 3 shards and the killed one again
    assert result["watermark"] == "2026-01-06"


def test_the_next_sweep_trains_on_the_new_papers(server):
    """A sweep after a re-embed fixes a snapshot that holds the new papers; the earlier
    sweep's snapshot stays as it was (a sweep reads a fixed set, whatever lands later)."""
    from flows.sweep import sweep
    from tasks.embed.snapshot import snapshot_by_id
    from tasks.sweep.config import SweepParams

    def sweep_once():
        params = SweepParams(
            domains=["cs.LG"], embedder=EMBEDDER, k=[2], n_latents=[8], epochs=1, batch_size=8
        )
        (result,) = sweep(params)
        assert not result.failed and len(result.cells) == 1
        snap = snapshot_by_id(store(), CS, NAMESPACE, result.data_snapshot)
        ids = sorted(store().read_parquet(snap.path, columns=["id"])["id"])
        return result, snap, ids

    from tasks.sweep.steps import SweepInputError

    # 1 id in 20 is held out, by hash: none of 2601.00000-00048 is, 2601.00049 is.
    server.api_entries = [paper(i, 5) for i in range(40)]
    assert run()["embedded"] == 40
    with pytest.raises(SweepInputError, match=r"has 40 training and 0 held-out papers"):
        sweep_once()

    server.api_entries += [paper(i, 6) for i in range(40, 50)]
    assert run()["embedded"] == 10
    # Fewer training papers than one batch: refused before any training, named.
    too_big = SweepParams(domains=["cs.LG"], embedder=EMBEDDER, k=[2], n_latents=[8], batch_size=64)
    with pytest.raises(SweepInputError, match=r"49 training papers, fewer than one batch \(64\)"):
        sweep(too_big)
    before, before_snap, before_ids = sweep_once()
    assert before_ids == [f"2601.{i:05d}" for i in range(50)]

    server.api_entries += [paper(i, 7) for i in range(50, 60)]
    assert run()["embedded"] == 10
    after, after_snap, after_ids = sweep_once()
    assert after_ids == [f"2601.{i:05d}" for i in range(60)]
    assert after.data_snapshot != before.data_snapshot and after.sweep_id != before.sweep_id
    assert (after_snap.n_train, after_snap.n_eval) == (59, 1)
    unchanged = store().read_parquet(before_snap.path, columns=["id"])
    assert sorted(unchanged["id"]) == before_ids


def test_a_changed_embedder_gets_its_own_complete_namespace(server):
    server.api_entries = [paper(i, 5) for i in range(3)]
    first = run()
    server.api_entries += [paper(3, 6), paper(4, 7)]
    second = run(embedder="openai:other-model")
    assert second["embedder"] == "openai-other-model"
    assert (second["new"], second["embedded"]) == (2, 5)  # the whole corpus, once

    old = Namespace(store(), NAMESPACE)
    new = Namespace(store(), "openai-other-model")
    assert sorted(old.read_manifest()["id"].to_list()) == [f"2601.{i:05d}" for i in range(3)]
    assert sorted(new.read_manifest()["id"].to_list()) == [f"2601.{i:05d}" for i in range(5)]
    assert set(old.read_manifest()["part"]) == set(old.parts())
    assert set(new.read_manifest()["part"]) == set(new.parts())
    assert store().read_json(f"{old.folder}/_embedder.json")["spec"] == EMBEDDER
    assert store().read_json(f"{new.folder}/_embedder.json")["spec"] == "openai:other-model"
    assert first["watermark"] == "2026-01-05" and second["watermark"] == "2026-01-07"


# --- the lease on its own ---------------------------------------------------------------------


def test_a_second_lease_waits_for_the_first_then_takes_it():
    from tasks.reembed import ReembedBusyError, acquire_lease

    s = store()
    first = acquire_lease(s, CS, label="first")
    with pytest.raises(ReembedBusyError, match=r"locks/reembed-cs_lg\.json is held by"):
        acquire_lease(s, CS)
    timer = threading.Timer(1.0, first.release)
    timer.start()
    t0 = time.monotonic()
    second = acquire_lease(s, CS, wait_s=CEILING_S, poll_s=0.1)
    assert time.monotonic() - t0 > 0.8  # it waited for the release rather than failing
    assert s.read_json("locks/reembed-cs_lg.json")["owner"] == second.owner
    second.release()
    assert not s.exists("locks/reembed-cs_lg.json")


def test_an_expired_lease_or_one_whose_process_is_gone_is_taken_over():
    from tasks.reembed import acquire_lease

    s = store()
    old = acquire_lease(s, CS, ttl_s=0.5)
    time.sleep(0.6)
    new = acquire_lease(s, CS)
    assert s.read_json("locks/reembed-cs_lg.json")["owner"] == new.owner != old.owner
    new.release()

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gone = acquire_lease(s, CS)
    info = s.read_json("locks/reembed-cs_lg.json")
    s.write_json("locks/reembed-cs_lg.json", {**info, "pid": int(dead.stdout)})
    taken = acquire_lease(s, CS)
    assert s.read_json("locks/reembed-cs_lg.json")["owner"] == taken.owner != gone.owner
    taken.release()


def test_the_lease_is_exclusive_on_s3(s3_store_root):
    from tasks.reembed import ReembedBusyError, acquire_lease

    s = store()
    held = acquire_lease(s, CS)
    with pytest.raises(ReembedBusyError):
        acquire_lease(s, CS)
    with held.held(renew_s=0.2):
        time.sleep(0.5)
        assert s.read_json("locks/reembed-cs_lg.json")["owner"] == held.owner
    assert not s.exists("locks/reembed-cs_lg.json")


def test_bad_input_exits_2_before_anything_starts(monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    for args, message in (
        (["hep_thh"], "unknown domain 'hep_thh': did you mean hep-th?"),
        (["cs.LG", "--source", "ftp"], "'ftp' is not one of 'api', 'oai'"),
        (["cs.LG", "--since", "2026-02-01", "--until", "2026-01-01"], "is after until"),
        (["cs.LG", "--since", "yesterday"], "--since takes YYYY-MM-DD"),
        (["cs.LG", "--embedder", "word2vec"], "unknown embedder spec"),
    ):
        result = runner.invoke(app, ["reembed", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
