"""`make run`'s data step: the sample when there is one, else a recent window from arXiv
(a local stand-in here), else one sentence saying what to do."""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows import quickstart
from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.corpus.storage import read_papers, read_watermark
from tests.tasks.arxiv_server import Paper, unused_url

REPO = Path(__file__).resolve().parents[2]
CS = get_domain("cs.LG")


def recent_paper(i: int) -> Paper:
    return Paper(
        f"2611.{i:05d}",
        title=f"Recent paper {i}",
        abstract=f"Paper {i} trains sparse autoencoders on dense text embeddings. " * 3,
        submitted=datetime.now(UTC) - timedelta(days=1 + i % 3),
    )


@pytest.fixture
def server(arxiv_stand_in):
    return arxiv_stand_in


def store() -> Store:
    return Store.from_settings(get_settings())


def test_the_sample_is_used_when_present(tmp_path, server):
    (tmp_path / "cs_lg.jsonl.gz").write_bytes(b"")
    assert quickstart.prepare(tmp_path) == tmp_path / "cs_lg.jsonl.gz"
    assert server.requests == []


def test_without_the_sample_a_recent_window_is_harvested_once(tmp_path, server, monkeypatch):
    monkeypatch.setattr(quickstart, "MAX_PAPERS", 5)
    server.api_entries = [recent_paper(i) for i in range(8)]
    assert quickstart.prepare(tmp_path / "absent") is None

    assert read_papers(store(), CS).height == 5  # capped
    assert read_watermark(store(), CS) is not None
    today = datetime.now(UTC).date()
    since = today - timedelta(days=quickstart.WINDOW_DAYS)
    window = f"submittedDate:[{since:%Y%m%d}0000 TO {today:%Y%m%d}2359]"
    assert window in server.requests[0].query["search_query"]

    # A rerun trains on what the first fetched: arXiv is not asked again.
    asked = len(server.requests)
    assert quickstart.prepare(tmp_path / "absent") is None
    assert len(server.requests) == asked


def test_offline_without_the_sample_says_what_to_do(tmp_path):
    # As `make run` runs it: its own process, so stderr is all the user would see.
    closed = unused_url()
    env = {**os.environ, "SAE_HARVEST_API_URL": closed, "SAE_HARVEST_OAI_URL": closed}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.quickstart", str(tmp_path)],
        cwd=REPO,
        env={**env, "SAE_HARVEST_MIN_INTERVAL_S": "0"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # above it, the harvester's log of each try
    assert last.startswith("error: no arXiv sample at") and last.endswith("rerun `make run`")
    assert f"no arXiv sample at {tmp_path / 'cs_lg.jsonl.gz'}" in last
    assert "set ARXIV_DATA=" in last and "connect to the internet" in last
    assert read_watermark(store(), CS) is None


def test_the_sweeps_are_the_readmes():
    readme = (REPO / "README.md").read_text()
    blocks = [
        " ".join(block.replace("\\\n", " ").split())
        for block in re.findall(r"```bash\n(sae sweep cs\.LG .*?)```", readme, re.S)
    ]
    sample = Path("../shared/data/arxiv/cs_lg.jsonl.gz")
    assert " ".join(quickstart.sweep_argv(sample)) in blocks
    assert " ".join(quickstart.sweep_argv(None)) in blocks
