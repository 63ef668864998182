"""One Prefect history per SAE_HOME: a run's own server records where ``sae up`` serves.

That a run without ``sae up`` shows in ``sae up``'s Prefect UI afterwards is checked in a
browser, on a real sweep: tests/browser/test_ui.py."""

from __future__ import annotations

import os

import httpx
import pytest

from infra import local_stack as ls
from infra.settings import get_settings
from tests.infra.test_local_stack import _servers_of

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(monkeypatch):
    for name in ("PREFECT_API_URL", "SAE_PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    # Not 4200: a developer's own `sae up` may hold it.
    monkeypatch.setattr(ls, "DEFAULT_PORTS", {**ls.DEFAULT_PORTS, "prefect": ls.free_port()})
    settings = get_settings()
    yield settings
    ls.stack_down(settings)


def test_one_server_per_database_and_a_second_run_goes_private(settings):
    history = ls.history_database(settings)
    history.parent.mkdir(parents=True)
    held = ls._claim_database(history)  # as a server serving it would
    try:
        before = _servers_of(os.getpid())
        with pytest.raises(ls.DatabaseInUseError, match="another Prefect server serves"):
            ls.start_prefect_server(settings, persistent=True)
        assert _servers_of(os.getpid()) == before

        with ls.prefect_for_run(settings, timeout=600) as url:
            (private,) = history.parent.glob("run-*.db")
            assert httpx.get(f"{url}/health", trust_env=False).status_code == 200
        assert not private.exists()
    finally:
        held.close()

    server = ls.start_prefect_server(settings)
    try:
        assert ls._claim_database(history) is None  # the server inherited the lock
    finally:
        server.stop()
    ls._claim_database(history).close()  # and let it go when it stopped
