"""Setting environment variables for a module's fixtures (monkeypatch is per test)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


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
