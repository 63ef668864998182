"""A sweep on a Ray cluster of two nodes, a head and a worker started with `ray start` on
this machine, each with one GPU as Ray counts them (`--num-gpus=1`: Ray takes the count
on trust; the tasks' torch sees no CUDA and runs on the CPU): the embedding shards and
the packs, one GPU each, spread over both, and a pack whose node is lost mid-way resumes
on the other from its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.ray_nodes import RayNode, cluster_folder, free_port, head_args, node_env

REPO = Path(__file__).resolve().parents[2]
CELLS = ("csLG_8_1024_16", "csLG_16_1024_16")


@pytest.fixture(scope="module")
def two_nodes():
    import ray

    ray.shutdown()  # an earlier module's local Ray in this process
    tmp, token = cluster_folder("raynodes-")
    port = free_port()
    gpu = ["--num-cpus=1", "--num-gpus=1"]
    head = [*head_args(port, free_port()), *gpu]
    nodes = []
    try:
        nodes.append(RayNode("head", head, tmp, node_env(token)).wait_started())
        worker_args = [f"--address=127.0.0.1:{port}", *gpu]
        nodes.append(RayNode("worker", worker_args, tmp, node_env(token)).wait_started())
        yield f"127.0.0.1:{port}", token, *nodes
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_packs_and_shards_spread_over_two_nodes_and_a_lost_node_s_pack_resumes(
    two_nodes, cs_lg_head, prefect_api, tmp_path
):
    import torch
    from mlflow import MlflowClient

    from infra.store import Store

    address, token, head, worker = two_nodes
    home = tmp_path / "home"
    store = Store(str(home / "store"))
    env = {
        **os.environ,
        "RAY_ADDRESS": address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "SAE_HOME": str(home),
        "PREFECT_API_URL": prefect_api,
        "SAE_EMBED_SHARD_SIZE": "30",  # 4 shards of the 120 papers
    }
    # Two cells, so two packs (one per GPU). 200 epochs of 7 steps with a checkpoint after
    # each: seconds between a pack's first checkpoint and its end, against a kill that
    # follows the first within a 50 ms poll.
    grid = ["--k", "8,16", "--n", "1024", "--epochs", "200", "--batch-size", "16"]
    log = tmp_path / "sweep.log"  # a file: a pipe left unread while polling could fill
    with log.open("w") as out:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "sweep", "cs.LG", "--source", str(cs_lg_head),
             "--limit", "120", *grid, "--checkpoint-every-s", "0"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    # The event: a cell of the worker's pack has a checkpoint and is not done. Its step
    # then is where the pack's next attempt may resume at the earliest.
    killed, worker_id = None, worker.node_id
    try:
        while killed is None and sweep.poll() is None:
            for cell in CELLS:
                folder = _cell_folder(store, cell)
                if folder is None or store.exists(f"{folder}/metrics.json"):
                    continue
                attempts = _attempts(store, folder)
                state = Path(store.root, folder, "train_state.pt")
                if attempts and attempts[0]["node_id"] == worker_id and state.is_file():
                    step = torch.load(state, weights_only=True)["step"]
                    worker.kill()
                    killed = cell, step
                    break
            time.sleep(0.05)
        sweep.wait(timeout=900)
    finally:
        sweep.kill()  # a no-op once it has ended
        sweep.wait()
    out = log.read_text()
    assert killed is not None, "no pack was caught mid-way on the worker: make it longer\n" + out
    assert sweep.returncode == 0, out
    assert "cs.LG: embedded 120 new papers on 2 Ray node(s)" in out

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.run_kind = 'cell'"
    )
    assert sorted(r.data.tags["cell"] for r in runs) == sorted(CELLS)  # one run per cell
    for k in (8, 16):
        assert len(client.search_model_versions(f"name = 'sae-cs.LG-k{k}-n1024'")) == 1
    attempts = {r.data.tags["cell"]: json.loads(r.data.tags["train_attempts"]) for r in runs}
    first_nodes = {cell: a[0]["node_id"] for cell, a in attempts.items()}
    assert set(first_nodes.values()) == {head.node_id, worker.node_id}  # one pack on each

    lost, checkpoint_step = killed
    first, again = attempts[lost]  # exactly two attempts: the lost one and its retry
    assert (first["node_id"], again["node_id"]) == (worker.node_id, head.node_id)
    assert again["first_step"] > checkpoint_step >= 1  # resumed, not started over
    (other,) = set(CELLS) - {lost}
    assert [a["node_id"] for a in attempts[other]] == [head.node_id]


def _cell_folder(store, cell: str) -> str | None:
    found = store.list("sae", f"*/{cell}/placement.json")  # from the first logged step
    return found[0].rsplit("/", 1)[0] if found else None


def _attempts(store, folder: str) -> list[dict]:
    try:
        return store.read_json(f"{folder}/placement.json")
    except FileNotFoundError:
        return []
