"""Ray nodes started with `ray start --block`, as on a cluster, for the tests that join
one; and the processes a run leaves, found through /proc."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY_CLI = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_folder(prefix: str) -> tuple[Path, Path]:
    """A fresh folder for a test cluster's nodes (short, under /tmp: Ray's socket paths
    are limited) and the cluster's token file in it."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    return tmp, token


def head_args(port: int, client_port: int) -> list[str]:
    """`ray start` arguments of a test cluster's head: its GCS on ``port``, Ray Client on
    ``client_port``, no dashboard and no autoscaler (a hidden flag: nothing to scale)."""
    return [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={client_port}",
        "--no-monitor",
    ]


def node_env(token: Path) -> dict[str, str]:
    """A node's environment: Ray's token authentication (its default for `ray start`
    since 2.59), and none of this project's settings: what workers need must come
    through the job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAE_", "RAY_", "PREFECT_"))}
    return env | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "OPENAI_API_KEY": "x",
    }


class RayNode:
    """``ray start --block ARGS`` in a session of its own, logging under ``tmp``.

    ``tmp`` must be short: Ray's socket paths live under it and must fit in 107
    characters. Ephemeral ports throughout: Ray's defaults would clash with a Ray of
    the developer's.
    """

    def __init__(self, name: str, args: list[str], tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp / name
        self.tmp.mkdir()
        self.log_path = self.tmp / "node.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [
                    RAY_CLI,
                    "start",
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    f"--dashboard-agent-listen-port={free_port()}",
                    "--disable-usage-stats",
                    # The log monitor ships workers' logs to drivers (ours ask for none):
                    # seconds of CPU on 2 cores for nothing.
                    "--include-log-monitor=false",
                    f"--temp-dir={self.tmp}",
                    *args,
                ],
                cwd=self.tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_started(self) -> RayNode:
        # The log line or the node's exit decides; the deadline is only a safety net.
        deadline = time.monotonic() + 600
        while "Ray runtime started" not in self.log_path.read_text():
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "the Ray node did not start in 600 s"
            time.sleep(0.5)
        return self

    @property
    def node_id(self) -> str:
        """Ray's id of this node, as its raylet logs it at start."""
        raylet = self.tmp / "session_latest" / "logs" / "raylet.out"
        return re.search(r"Setting node ID node_id=([0-9a-f]+)", raylet.read_text())[1]

    def kill(self) -> None:
        """SIGKILL to every process of the node, as a lost machine: its workers have
        process groups of their own, but stay in its session. (`ray stop` would stop
        every Ray on the machine.)"""
        # Again until none is left: a raylet may start a worker meanwhile.
        while pids := session_pids(self.process.pid):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        self.process.wait()


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # After the command's parentheses: state, ppid, pgrp, session.
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # a zombie runs nothing
                pids.append(int(entry))
    return pids


def processes_with_env(name: str, value: str) -> dict[int, str]:
    """{pid: command line} of the processes whose environment, as they started, holds
    ``name=value``: whatever a process started, however it detached, inherits it."""
    wanted = f"{name}={value}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if wanted not in f.read().split(b"\0"):
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found
