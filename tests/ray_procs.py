"""Finding the worker process that runs a Ray task, to kill it as a crash would."""

from __future__ import annotations

import os


def task_worker_pids(task_name: str) -> list[int]:
    """Ray names a busy worker process after its task: ``ray::{task_name}``."""
    prefix = f"ray::{task_name}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(prefix):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids
