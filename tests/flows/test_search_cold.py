"""`sae search` from a new process on a finished sweep: the sweep leaves its index in the
store; a search reads it without importing MLflow, Prefect or Ray; a running `sae serve`
answers the same --json and text output, byte for byte, without torch in the command; a
sweep without an index is found in MLflow and indexed for the next search."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings
from tasks.search import remote
from tasks.search.cold import start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SAE = str(Path(sys.executable).with_name("sae"))
QUERY = "graph neural networks for molecules"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment with no stack of its own: everything under ``home``."""
    drop = ("SAE_", "PREFECT_API", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    cache = {"SAE_CACHE_DIR": os.environ["SAE_CACHE_DIR"]}  # the session's exported model
    return {**env, **cache, "SAE_HOME": str(home), **extra}


def sae(home: Path, *args: str, code: int = 0, imports: bool = False):
    """(stdout, stderr, top-level packages imported) of ``sae *args`` in a new process."""
    env = _env(home, **({"PYTHONPROFILEIMPORTTIME": "1"} if imports else {}))
    done = subprocess.run([SAE, *args], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == code, done.stderr[-5000:]
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return done.stdout, done.stderr, names


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cs_lg_head) -> Path:
    """A home with a one-cell cs.LG sweep of 100 papers, run as a user runs it."""
    home = tmp_path_factory.mktemp("search_cold") / "sae_home"
    sweep = ["sweep", "cs.LG", "--source", str(cs_lg_head), "--limit", "100"]
    sae(home, *sweep, "--k", "4", "--n", "32", "--epochs", "2", "--batch-size", "8")
    return home


@contextlib.contextmanager
def serving(home: Path) -> Iterator[None]:
    """`sae serve --port 0 --preload` on ``home``, once its engine is built."""
    log_path = home / "logs" / "serve.log"
    proc, _ = start_server("cs.LG", log_path, Settings(home=home), _env(home))
    try:
        yield
    finally:
        stop_server(proc)
    # Ctrl-C's own exit: uvicorn stops, then raises the signal again once it has.
    assert proc.returncode in (0, 130), log_path.read_text()[-5000:]


def test_a_new_process_reads_the_index_and_a_running_serve_answers_the_same(swept):
    (index,) = (swept / "store" / "sae").glob("*/sweep.json")
    doc = json.loads(index.read_text())
    assert doc["domain"] == "cs.LG" and doc["status"] == "FINISHED"
    assert [c["champion"] for c in doc["cells"]] == [True]

    args = ["search", QUERY, "--top", "5", "--json"]
    local, _, imported = sae(swept, *args, "--in-process", imports=True)
    heavy = {"mlflow", "prefect", "ray", "transformers"}
    assert "torch" in imported and not imported & heavy, imported
    answer = json.loads(local)
    assert (answer["sweep"], answer["cell"]) == (doc["sweep_id"], doc["cells"][0]["cell"])
    absent = min(set(range(32)) - {f["id"] for f in answer["features"]})
    steered = ["search", QUERY, "--top", "5", "--boost", f"{absent}=8"]
    text = sae(swept, *steered, "--in-process")[0]
    assert f"#{absent} 8.00 (set)" in text
    refused = errors(sae(swept, "search", QUERY, "--boost", "99=1", "--in-process", code=2)[1])
    assert refused and "feature 99 does not exist" in refused[0]

    with serving(swept):
        served, _, imported = sae(swept, *args, imports=True)
        assert "torch" not in imported, "the search ran in the command, not in sae serve"
        assert served == local
        assert sae(swept, *steered)[0] == text
        assert errors(sae(swept, "search", QUERY, "--boost", "99=1", code=2)[1]) == refused
    assert not remote.serve_file(Settings(home=swept)).exists()

    # A sweep made before the index: MLflow answers it, and leaves the index behind.
    index.unlink()
    again, _, imported = sae(swept, *args, imports=True)
    assert again == local and "mlflow" in imported and index.exists()
    assert json.loads(index.read_text()) == doc
