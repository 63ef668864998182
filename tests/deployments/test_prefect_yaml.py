"""deployments/prefect.yaml applied to a real Prefect server (scheduler on), read back through
the API, and the cs.LG re-embed deployment run once by a process worker against a local
arXiv stand-in and a stub embeddings endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tasks.corpus.domains import get_domain

REPO = Path(__file__).resolve().parents[2]
PREFECT_FILE = "deployments/prefect.yaml"
PREFECT = [sys.executable, "-m", "prefect"]
CS = get_domain("cs.LG")
#: Safety nets only: each wait below ends on an event (a process exit, runs on the
#: calendar), and on a loaded machine a Prefect CLI or worker takes minutes to get there.
CEILING_S = 600
# The module's server, `prefect deploy` and a worker's whole re-embed, on a slow machine.
pytestmark = pytest.mark.timeout(3 * CEILING_S)
#: Settings of the tester's shell that must not reach the worker's flow runs.
_SCRUB = (
    "SAE_STORE",
    "SAE_MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
    "SAE_RAY_ADDRESS",
    "RAY_ADDRESS",
    "SAE_PREFECT_API_URL",
    "PREFECT_API_KEY",
)


def _env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home / "prefect_client"),
        PREFECT_CLI_PROMPT="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        SAE_HOME=str(home / "sae_home"),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @contextlib.contextmanager
    def client():
        with (
            temporary_settings(updates={PREFECT_API_URL: api_url}),
            get_client(sync_client=True) as c,
        ):
            yield c

    return client()


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A Prefect server with its scheduling services, the two work pools, and every
    deployment of prefect.yaml applied by `prefect deploy`. Yields (api_url, home)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from infra.local_stack import start_prefect_server
    from infra.settings import Settings

    home = tmp_path_factory.mktemp("deployments")
    server = start_prefect_server(Settings(home=home / "server"), persistent=True)
    try:
        server.wait_healthy(CEILING_S)
        with _client(server.api_url) as client:
            template = ProcessWorker.get_default_base_job_template()
            for pool in ("gpu", "cpu"):
                client.create_work_pool(
                    WorkPoolCreate(name=pool, type="process", base_job_template=template)
                )
        deploy = subprocess.run(
            [*PREFECT, "--no-prompt", "deploy", "--prefect-file", PREFECT_FILE, "--all"],
            cwd=REPO,
            env=_env(server.api_url, home),
            capture_output=True,
            text=True,
            timeout=CEILING_S,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        yield server.api_url, home
    finally:
        server.stop()


def test_deployments_apply_with_schedules_pools_limits_and_typed_parameters(deployed):
    from prefect.client.schemas.filters import DeploymentFilter
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.server.schemas.schedules import CronSchedule

    api_url, _ = deployed
    with _client(api_url) as client:
        sweep = client.read_deployment_by_name("sweep/full")
        reembeds = {
            domain: client.read_deployment_by_name(f"reembed/reembed-{slug}")
            for domain, slug in (("cs.LG", "cs-lg"), ("astro-ph", "astro-ph"))
        }

        # The sweep: manual, on the GPU pool, its parameters the typed SweepParams form.
        assert sweep.work_pool_name == "gpu" and sweep.schedules == []
        assert sweep.parameters == {} and sweep.enforce_parameter_schema
        schema = sweep.parameter_openapi_schema
        assert schema["properties"]["params"]["$ref"] == "#/definitions/SweepParams"
        fields = schema["definitions"]["SweepParams"]["properties"]
        assert {"domains", "k", "n_latents", "epochs", "batch_size", "lr"} <= set(fields)
        assert fields["k"]["type"] == "array" and fields["k"]["items"]["type"] == "integer"

        crons = {}
        for domain, dep in reembeds.items():
            assert dep.work_pool_name == "cpu"
            assert dep.parameters == {"params": {"domains": [domain]}}
            assert dep.global_concurrency_limit is not None
            assert dep.global_concurrency_limit.limit == 1
            assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
            (schedule,) = dep.schedules
            assert schedule.active and schedule.schedule.timezone == "UTC"
            crons[domain] = schedule.schedule.cron
            (step,) = dep.pull_steps
            directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
            assert Path(directory).resolve() == REPO
            fields = dep.parameter_openapi_schema["definitions"]["ReembedParams"]["properties"]
            assert fields["domains"]["type"] == "array"
            assert {"since", "until", "source", "embedder", "limit"} <= set(fields)
        assert crons == {"cs.LG": "0 6 * * *", "astro-ph": "20 6 * * *"}
        names = {d.name for d in client.read_deployments(deployment_filter=DeploymentFilter())}
        assert names == {"full", "features", "reembed-cs-lg", "reembed-astro-ph"}
        feats = client.read_deployment_by_name("features/features")
        assert feats.work_pool_name == "gpu" and feats.schedules == []
        fields = feats.parameter_openapi_schema["definitions"]["FeaturesParams"]["properties"]
        assert {"domains", "sweep", "cells"} <= set(fields)

    # What the server's scheduler makes of them: every day, 06:00 and 06:20 UTC.
    for domain, minute in (("cs.LG", 0), ("astro-ph", 20)):
        dates = asyncio.run(CronSchedule(cron=crons[domain], timezone="UTC").get_dates(n=2))
        assert [(d.hour, d.minute) for d in dates] == [(6, minute)] * 2
        assert dates[1] - dates[0] == timedelta(days=1)


def test_the_scheduler_puts_the_next_daily_runs_on_the_calendar(deployed):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    api_url, home = deployed
    server_log = home / "server" / "logs" / "prefect.log"
    deadline, scheduled = time.monotonic() + CEILING_S, []
    with _client(api_url) as client:
        while time.monotonic() < deadline:
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["reembed-cs-lg"])
                ),
            )
            if scheduled:
                break
            time.sleep(1)
    # infra/prefect_server.py makes this work with SQLAlchemy 2.1 (see its docstring).
    assert scheduled, f"the scheduler created no runs; see {server_log}:\n{_tail(server_log, 3000)}"
    for run in scheduled:
        when = run.expected_start_time.astimezone(UTC)
        assert (when.hour, when.minute) == (6, 0) and when > datetime.now(UTC)


def test_the_reembed_deployment_runs_once_through_a_worker(deployed):
    from prefect.client.schemas.objects import StateType

    from infra.store import Store
    from tasks.corpus.storage import read_watermark
    from tasks.embed.manifest import Namespace
    from tests.tasks.arxiv_server import ArxivServer, Paper
    from tests.tasks.embed_stub_server import StubEmbeddingsServer

    api_url, home = deployed
    papers = [
        Paper(
            f"2601.{i:05d}",
            title=f"Scheduled paper {i}",
            abstract=f"Paper {i} trains sparse autoencoders on text embeddings. " * 3,
            submitted=datetime(2026, 1, 6 + i, 9, tzinfo=UTC),
        )
        for i in range(3)
    ]
    params = {"params": {"domains": ["cs.LG"], "until": "2026-01-10", "embedder": "openai:stub"}}
    with ArxivServer(api_entries=papers) as arxiv, StubEmbeddingsServer(dim=8) as stub:
        env = _env(
            api_url,
            home,
            SAE_HARVEST_API_URL=arxiv.api_url,
            SAE_HARVEST_OAI_URL=arxiv.oai_url,
            SAE_HARVEST_MIN_INTERVAL_S="0",
            SAE_EMBED_API_BASE=stub.url,
            OPENAI_API_KEY="sk-test",
            SAE_EMBED_SHARD_SIZE="2",
        )
        trigger = subprocess.run(
            [
                *PREFECT,
                "deployment",
                "run",
                "reembed/reembed-cs-lg",
                "--params",
                json.dumps(params),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=CEILING_S,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        log_path = home / "worker.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", "cpu", "--type", "process", "--run-once"],
                cwd=home,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            worker.wait(timeout=CEILING_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not finish in {CEILING_S} s:\n{_tail(log_path)}")
        finally:
            _stop(worker)
        assert worker.returncode == 0, _tail(log_path)

    with _client(api_url) as client:
        deployment = client.read_deployment_by_name("reembed/reembed-cs-lg")
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    done = [r for r in runs if r.state and r.state.is_final()]
    assert len(done) == 1, [(r.name, r.state_type) for r in runs]
    assert done[0].state.type == StateType.COMPLETED, (done[0].state, _tail(log_path))
    assert done[0].parameters == params

    store = Store(str(home / "sae_home" / "store"))
    manifest = Namespace(store, "openai-stub").read_manifest()
    assert sorted(manifest["id"].to_list()) == [p.id for p in papers]
    assert read_watermark(store, CS).newest == date(2026, 1, 8)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no worker log)"
