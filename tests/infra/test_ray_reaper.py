"""The reaper kills, once its raylet is gone, what that raylet started and nothing else:
stand-ins here (sleeping processes), no Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time

#: A safety net only: the test ends as soon as what it waits for happens.
CEILING_S = 60


def _sleeper(**env: str) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600"], env={**os.environ, **env})


def _waits_on_a_pidfd(pid: int) -> bool:
    fds = f"/proc/{pid}/fd"
    return any(os.readlink(f"{fds}/{fd}") == "anon_inode:[pidfd]" for fd in os.listdir(fds))


def test_what_the_raylet_started_goes_with_it_and_nothing_else():
    raylet, other_raylet = _sleeper(), _sleeper()
    agents = [_sleeper(RAY_RAYLET_PID=str(raylet.pid)) for _ in range(2)]
    others = [_sleeper(RAY_RAYLET_PID=str(other_raylet.pid)), _sleeper()]
    reaper = subprocess.Popen([sys.executable, "-m", "infra.ray_reaper", str(raylet.pid)])
    try:
        # The event: the reaper watches the raylet (a pidfd, Linux >= 5.3).
        deadline = time.monotonic() + CEILING_S
        while not _waits_on_a_pidfd(reaper.pid):
            assert reaper.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        raylet.kill()
        raylet.wait()
        assert reaper.wait(timeout=CEILING_S) == 0  # it exits once it has killed them
        assert [a.wait(timeout=CEILING_S) for a in agents] == [-9, -9]
        assert [p.poll() for p in others] == [None, None]
    finally:
        for p in (raylet, other_raylet, *agents, *others, reaper):
            p.kill()
            p.wait()
