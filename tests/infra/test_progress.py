"""A stage's progress: a live line on a terminal, a log line at most every 10 s elsewhere."""

import io
import re

import pytest

from infra import progress
from infra.progress import LOG_EVERY_S, StageProgress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_off_a_terminal_a_stage_logs_at_most_every_10_s_and_once_at_the_end():
    clock, lines = Clock(), []
    stage = StageProgress(
        "embedding cs.LG", 1000, "papers", tty=False, clock=clock, emit=lines.append
    )
    for done in range(0, 1001, 10):  # 101 updates over 50 s
        clock.now += 0.5
        stage.update(done, backend="torch")
    stage.close()
    stage.close()  # closing twice says nothing more
    assert len(lines) == int(50.5 // LOG_EVERY_S) + 1
    assert lines[0] == "embedding cs.LG: 190/1000 papers (19.0/s, ETA 43s, backend torch)"
    assert lines[-1] == "embedding cs.LG: 1000/1000 papers (19.8/s, 50s in all, backend torch)"


def test_a_stage_without_a_total_counts_and_a_long_wait_reads_in_hours():
    clock, lines = Clock(), []
    stage = StageProgress("harvest gr-qc", tty=False, clock=clock, emit=lines.append)
    clock.now += 11
    stage.update(3, requests=2)
    assert lines == ["harvest gr-qc: 3 (0.3/s, requests 2)"]
    slow = StageProgress("all", 2_700_000, "papers", tty=False, clock=clock, emit=lines.append)
    clock.now += 10
    slow.update(150)
    assert lines[-1] == "all: 150/2700000 papers (15.0/s, ETA 49h59m)"


def test_on_a_terminal_the_line_moves_in_place(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress.sys, "stdout", out)
    lines = []
    shown = StageProgress("features", 3, "cells", tty=True, emit=lines.append, redraw_s=0)
    with shown as stage:
        for done in (1, 2, 3):
            stage.update(done, latest=f"csLG_32_{done}")
    text = out.getvalue()
    assert lines == []  # no log lines: the bar says it
    frames = [f for f in re.split(r"[\r\n]", text) if f.strip()]
    counts = [re.search(r"(\d)/3", f).group(1) for f in frames if re.search(r"\d/3", f)]
    assert counts[0] in ("0", "1") and counts[-1] == "3" and len(set(counts)) >= 3
    assert "latest csLG_32_3" in text


@pytest.mark.parametrize("tty", [True, False])
def test_the_choice_follows_stdout(monkeypatch, tty):
    monkeypatch.setattr(progress.sys.stdout, "isatty", lambda: tty, raising=False)
    assert progress.on_terminal() is tty
