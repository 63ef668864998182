"""``python -m infra.ray_reaper RAYLET_PID``: once that raylet is gone, however it went,
SIGKILL what it started that is still there. Linux only (/proc).

A local Ray started by ``ray.init`` is tied to its driver: the kernel kills its GCS and
raylet when the driver dies (Ray sets their parent-death signal), and its workers leave
within a second of their raylet. Not the raylet's agents (dashboard agent, runtime-env
agent): each, seeing the raylet gone, reports it to the GCS, which died with it, and
waits 60 s for the answer (Ray 2.60, ``ray._private.process_watcher``). A SIGKILLed
``sae sweep`` left them running that long. This process waits for the raylet to exit
and kills them then: the processes whose environment names that raylet
(``RAY_RAYLET_PID``, set by the raylet for everything it starts) and that started after
it (so a reused pid matches nothing older). That environment stays readable only because
:func:`infra.ray_runtime.ensure_ray` sets SPT_NOENV: Ray's process titles overwrite it.

Started by :func:`infra.ray_runtime.ensure_ray` in a session of its own, so that a
Ctrl-C to the driver's terminal does not stop it before its raylet.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time


def start_time(pid: int) -> int | None:
    """Clock ticks from boot to the process's start (/proc/PID/stat field 22); None when
    it is gone (a zombie runs nothing either)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def wait_for_exit(pid: int, started: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3, or gone already: look each 0.5 s
        while start_time(pid) == started:
            time.sleep(0.5)
        return
    select.select([fd], [], [])  # readable once the process has exited


def started_by(raylet_pid: int, since: int) -> list[int]:
    mark = f"RAY_RAYLET_PID={raylet_pid}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        began = start_time(int(entry))
        if began is not None and began >= since:
            pids.append(int(entry))
    return pids


def main() -> None:
    raylet = int(sys.argv[1])
    started = start_time(raylet)
    if started is None:
        return
    wait_for_exit(raylet, started)
    for pid in started_by(raylet, started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
