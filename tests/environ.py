"""Setting environment variables for a module's fixtures (monkeypatch is per test), and
threads that see the test's settings."""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def environ(**updates: str) -> Iterator[None]:
    """``os.environ`` with ``updates`` until the block ends, then as it was. Processes
    started inside (Ray's workers) keep the values they were started with."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def thread_in_context(target: Callable[[], object]) -> threading.Thread:
    """A started thread running ``target`` in a copy of the caller's context. Prefect keeps
    its settings (the session's server, from ``prefect_env``) in a context variable that a
    plain thread does not inherit: a flow run there started an ephemeral server of its own,
    and on a loaded machine timed out connecting to it."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,))
    thread.start()
    return thread
