"""RAY_ADDRESS: the flows join a Ray head started on its own, as on a cluster, instead of
starting a Ray of their own. The head runs with token authentication (Ray's default for
`ray start` since 2.59) and without this project's settings in its environment: what its
workers need must come through the job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.ray_nodes import RayNode, cluster_folder, free_port, head_args, node_env

REPO = Path(__file__).resolve().parents[2]


class Head:
    def __init__(self, address: str, client_address: str, token_path: Path, tmp: Path) -> None:
        self.address = address  # host:port of its GCS, as for a driver inside the cluster
        self.client_address = client_address  # ray://host:port, Ray Client from outside
        self.token_path = token_path
        self.tmp = tmp

    def client_server_logs(self) -> str:
        """The ends of the head's Ray Client server logs: why a ray:// driver was refused."""
        logs = sorted(self.tmp.glob("session_*/logs/ray_client_server*"))
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)

    def driver_env(self, address: str | None = None, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "RAY_ADDRESS": address or self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            **extra,
        }

    def jobs(self) -> list[dict]:
        """The head's job table: one entry per driver that connected to it."""
        script = (
            "import json, sys, ray, ray._private.state as state\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "print(json.dumps([{'pid': j['DriverPid'], 'dead': j['IsDead']}"
            " for j in state.jobs()]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, self.address],
            env=self.driver_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ray_head():
    import ray

    ray.shutdown()  # an earlier module's local Ray in this process
    tmp, token = cluster_folder("rayhead-")
    port, client_port = free_port(), free_port()
    head = RayNode("head", [*head_args(port, client_port), "--num-cpus=2"], tmp, node_env(token))
    try:
        head.wait_started()
        yield Head(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", token, head.tmp)
    finally:
        head.kill()
        shutil.rmtree(tmp, ignore_errors=True)


# Starting the head and a whole sweep can outlast the default 300 s on a loaded machine.
@pytest.mark.timeout(1500)
def test_the_sweep_runs_on_the_ray_head_named_by_ray_address(
    ray_head, cs_lg_head, prefect_api, tmp_path
):
    """By the GCS address (host:port), as `ray job submit` and drivers on the cluster's
    network give it."""
    address = ray_head.address
    drivers_before = len(ray_head.jobs())
    home = tmp_path / "home"
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "sweep",
            "cs.LG",
            "--source",
            str(cs_lg_head),
            "--limit",
            "120",
            "--k",
            "4",
            "--n",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "32",
        ],
        cwd=REPO,
        env=ray_head.driver_env(address, SAE_HOME=str(home), PREFECT_API_URL=prefect_api),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, out
    assert f"joining the Ray cluster at {address}" in out
    # The session's Prefect server listens on 127.0.0.1: fine here, not on a real cluster.
    assert "cannot report their task runs to it" in out

    # The sweep was a driver of the head (its embedding shards and training pack ran
    # there), and its results are in the driver's store, not in the head's (which has no
    # SAE_HOME or SAE_STORE).
    drivers = ray_head.jobs()
    assert len(drivers) == drivers_before + 2  # the sweep, and jobs() itself
    assert {"pid": sweep.pid, "dead": True} in drivers
    (metrics,) = (home / "store" / "sae").glob("*/csLG_4_32_32/metrics.json")
    assert 0 < json.loads(metrics.read_text())["metrics"]["nmse"] < 2
    assert "| 4 | 32 | " in out and "sae-cs.LG-k4-n32" in out


@pytest.mark.timeout(900)
def test_a_driver_from_outside_joins_through_ray_client(ray_head, tmp_path):
    """ray://host:port, the README's way in from outside the cluster: the driver joins the
    head instead of starting a Ray, and the head's workers (whose environment has no SAE_
    settings) see the ones it forwards. The tasks are the sweep's above, so no second
    sweep: what differs is the connection."""
    store = tmp_path / "store"
    script = (
        "import logging, os, ray\n"
        "from infra.ray_runtime import ensure_ray\n"
        "from infra.settings import get_settings\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "ensure_ray(get_settings())\n"
        "seen = ray.remote(lambda: (os.environ.get('SAE_STORE'), os.getpid()))\n"
        "print('seen', os.getpid(), *ray.get(seen.remote()))\n"
    )
    drivers_before = len(ray_head.jobs())
    driver = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=ray_head.driver_env(ray_head.client_address, SAE_STORE=str(store)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert driver.returncode == 0, driver.stdout + driver.stderr + ray_head.client_server_logs()
    assert f"joining the Ray cluster at {ray_head.client_address}" in driver.stderr
    _, driver_pid, forwarded, worker_pid = driver.stdout.strip().splitlines()[-1].split()
    assert forwarded == str(store)
    assert worker_pid != driver_pid  # a worker of the head, not this process
    # Ray Client's driver is a process the head starts for it; and jobs() itself.
    assert len(ray_head.jobs()) == drivers_before + 2


@pytest.mark.timeout(900)
def test_a_driver_without_the_cluster_token_is_told_what_to_set(ray_head):
    env = {k: v for k, v in ray_head.driver_env().items() if not k.startswith("RAY_AUTH")}
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from infra.ray_runtime import ensure_ray\n"
            "from infra.settings import get_settings\n"
            "ensure_ray(get_settings())",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert check.returncode != 0
    last = check.stderr.strip().splitlines()[-1]
    assert last.startswith("infra.ray_runtime.RayUnavailableError"), check.stderr
    assert f"cluster at {ray_head.address} (RAY_ADDRESS) refused" in last
    assert "RAY_AUTH_MODE=token" in last and "RAY_AUTH_TOKEN_PATH" in last
    assert ray_head.token_path.read_text() not in check.stderr
