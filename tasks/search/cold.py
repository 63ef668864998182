"""The search bench's cold start (:mod:`tasks.search.bench`, ``--cold RUNS``): the wall
time of ``sae search QUERY --json`` as a user types it, each run a new process, in that
process (``--in-process``: imports, engine, embedder) and through a running ``sae serve``
(the home's own if one is recorded, else one started here with ``--preload`` and stopped
after); p50, min and max over the runs, and whether both printed the same answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from infra.settings import get_settings
from tasks.search import remote

#: Starting a server loads its domain's engine: minutes at most, even on a busy machine.
READY_TIMEOUT_S = 600.0


def sae() -> list[str]:
    """The ``sae`` command of this Python, as a user runs it."""
    script = Path(sys.executable).with_name("sae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def bytecode_note() -> str:
    if sys.flags.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "off (PYTHONDONTWRITEBYTECODE: imports without a cached .pyc compile from source)"
    return "on"


def time_runs(args: list[str], runs: int) -> tuple[list[float], str]:
    """Wall seconds of each run of ``sae *args``, and the last one's stdout."""
    seconds, out = [], ""
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([*sae(), *args], capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"sae {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
        out = done.stdout
    return seconds, out


def start_server(
    domain: str, log_path: Path, settings=None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, dict]:
    """``sae serve --port 0 --preload`` for ``domain``, once its engine is ready; ``env``
    and ``settings`` (default: this process's) say which home it serves."""
    settings = settings or get_settings()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*sae(), "serve", "--port", "0", "--domain", domain, "--preload"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sae serve exited {proc.returncode}; its log: {log_path}")
        server = remote.find(settings, domain)
        if server and server["pid"] == proc.pid and wait_ready(server, 0.0):
            return proc, server
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"sae serve was not ready in {READY_TIMEOUT_S:.0f} s; its log: {log_path}")


def wait_ready(server: dict, timeout_s: float) -> bool:
    """Whether ``server`` answers with no engine loading, waiting up to ``timeout_s`` for
    its engines; False at once when it does not answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with opener.open(server["url"] + "api/status", timeout=remote.STATUS_TIMEOUT_S) as r:
                status = json.load(r)
        except (OSError, ValueError):
            return False
        if status.get("pid") != server["pid"]:
            return False
        if not status.get("loading"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: it removes its address file
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_cold(domain: str, query: str, runs: int, row) -> list[str]:
    """The section's lines; ``row(name, *cells)`` formats one as the bench's tables."""
    settings = get_settings()
    args = ["search", query, "--domain", domain, "--json"]
    lines = [
        "",
        f"# 0. cold start: `sae search` in a new process, {domain}, {runs} runs each",
        row("python bytecode cache", bytecode_note()),
        row("seconds", "p50", "min", "max"),
    ]
    local, local_out = time_runs([*args, "--in-process"], runs)
    lines.append(row("in its own process (--in-process)", *_stats(local)))
    proc = None
    server = remote.find(settings, domain)
    if server is None or not wait_ready(server, READY_TIMEOUT_S):
        proc, server = start_server(domain, settings.home / "logs" / "bench-serve.log")
    try:
        served, served_out = time_runs(args, runs)
    finally:
        if proc is not None:
            stop_server(proc)
    whose = "started here" if proc is not None else "already running"
    lines.append(row(f"through sae serve ({whose})", *_stats(served)))
    lines.append(
        row("the same --json output either way", "yes" if local_out == served_out else "NO")
    )
    return lines


def _stats(seconds: list[float]) -> tuple[float, float, float]:
    return float(np.median(seconds)), min(seconds), max(seconds)
