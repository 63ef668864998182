"""`sae sweep` killed with SIGKILL while a pack trains leaves nothing of its own running:
not the local Ray it started, nor its workers, nor its Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.ray_nodes import processes_with_env

REPO = Path(__file__).resolve().parents[2]
#: A safety net only: the test ends as soon as the last process is gone.
CEILING_S = 60


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sweep_killed_mid_pack_leaves_no_process_behind(cs_lg_head, tmp_path):
    from tests.tasks.embed_stub_server import StubEmbeddingsServer

    home = str(tmp_path / "home")  # in the environment of everything the run starts
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_API"))}
    # Enough epochs that the pack still trains when the driver dies.
    grid = ["--k", "8", "--n", "1024", "--epochs", "1000", "--batch-size", "16"]
    # Vectors from a stand-in in this process: no embedding model in a Ray worker.
    with StubEmbeddingsServer(dim=16) as stub:
        env |= {"SAE_HOME": home, "SAE_EMBED_API_BASE": stub.url, "OPENAI_API_KEY": "sk-test"}
        sweep = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "sweep", "cs.LG", "--source", str(cs_lg_head),
             "--limit", "120", "--embedder", "openai:stub", *grid],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # The event: a Ray worker of this run trains the pack.
        while not any(c.startswith("ray::train-pack") for c in _of_run(home).values()):
            assert sweep.poll() is None, "the sweep ended before its pack was seen training"
            time.sleep(0.2)
        started = _of_run(home)
        # What the reaper will look for, once the raylet is gone: the raylet's pid in the
        # environment of each of its agents (Ray's process titles wiped it at times, and with it
        # this test's sight of them).
        (raylet,) = [pid for pid, c in started.items() if c.split()[0].endswith("/raylet")]
        marked = processes_with_env("RAY_RAYLET_PID", str(raylet)).values()
        agents = {c.split()[0] for c in marked if c.split()[0].endswith("Agent")}
        assert agents == {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}, started
        sweep.kill()
        sweep.wait()

        deadline = time.monotonic() + CEILING_S
        while (left := _of_run(home)) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not left, f"{len(left)} of the run's {len(started)} processes left: {left}"


def _of_run(home: str) -> dict[int, str]:
    return processes_with_env("SAE_HOME", home)
