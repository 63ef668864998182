"""What a person sees: in a terminal a live line per stage that moves; in a log (no
terminal) a plain line at most every 10 s."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.progress import LOG_EVERY_S
from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.corpus.ingest import ingest_source

SAE = str(Path(sys.executable).with_name("sae"))


@pytest.fixture
def corpus(arxiv_data):
    ingest_source(
        Store.from_settings(get_settings()),
        get_domain("cs.LG"),
        arxiv_data / "cs_lg.jsonl.gz",
        limit=24,
    )


def _env(**extra):
    env = {**os.environ, "SAE_EMBED_SHARD_SIZE": "8", "COLUMNS": "120", **extra}
    env.pop("SAE_DEBUG", None)
    return env


@pytest.mark.timeout(600)
def test_in_a_terminal_the_embedding_line_moves(corpus):
    # script(1) gives the command a pseudo-terminal, as a person's shell would.
    out = subprocess.run(
        ["script", "-qfec", f"{SAE} embed cs.LG", "/dev/null"],
        env=_env(TERM="xterm"),
        capture_output=True,
        timeout=540,
    )
    screen = out.stdout.decode()  # bytes: text mode would turn each \r into a new line
    assert out.returncode == 0, screen
    frames = [f for f in re.split(r"[\r\n]", screen) if "embedding cs.LG" in f]
    counts = [int(m.group(1)) for f in frames if (m := re.search(r"(\d+)/24", f))]
    assert counts[0] < 24 and counts[-1] == 24, frames
    assert counts == sorted(counts) and "\rembedding cs.LG" in screen  # redrawn in place
    assert "24 embedded" in screen


def test_without_a_terminal_a_plain_line_at_most_every_10_s(arxiv_stand_in):
    from datetime import UTC, datetime

    from tests.tasks.arxiv_server import Paper

    arxiv_stand_in.api_entries = [
        Paper(f"2601.{i:05d}", abstract="Sparse autoencoders on embeddings of abstracts. " * 3,
              submitted=datetime(2026, 1, 6, tzinfo=UTC))
        for i in range(1, 31)
    ]  # fmt: skip
    t0 = time.monotonic()
    args = ["harvest", "cs.LG", "--since", "2026-01-06", "--until", "2026-01-06"]
    out = subprocess.run([SAE, *args], env=_env(), capture_output=True, timeout=120)
    elapsed = time.monotonic() - t0
    text = (out.stdout + out.stderr).decode()
    assert out.returncode == 0, text
    assert "\r" not in text
    lines = [x for x in text.splitlines() if "harvest cs.LG: " in x]
    assert lines and re.search(r"harvest cs.LG: 30/30 records \(.*in all", lines[-1]), lines
    assert len(lines) <= 1 + elapsed / LOG_EVERY_S, lines
