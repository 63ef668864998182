"""``python -m infra.tied MODULE ARGS...``: ``python -m MODULE ARGS...`` that dies with the
process that started it, however that one ends (SIGKILL and the OOM killer included).

Started in its own session, with stdin the read end of a pipe whose write end only the
starting process holds (as :func:`infra.local_stack.start_prefect_server` starts a run's
server). The kernel closes that end when the process exits, whatever the cause; a thread
here then reads end-of-file and stops this process group: SIGTERM, and SIGKILL 10 s later
if it is still there.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time


def _stop_the_group_at_eof() -> None:
    while os.read(0, 1):  # nothing is written: this returns at end-of-file
        pass
    os.killpg(0, signal.SIGTERM)
    time.sleep(10)
    os.killpg(0, signal.SIGKILL)


def main() -> None:
    threading.Thread(target=_stop_the_group_at_eof, daemon=True).start()
    del sys.argv[0]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
