"""One Prefect history per SAE_HOME: a run's own server records where ``sae up`` serves."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

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


@contextlib.contextmanager
def _logged(name: str) -> Iterator[list[str]]:
    """The messages of logger ``name`` (caplog's handler is gone once Prefect configures
    logging on import)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _flow_run(api_url: str, flow_run_id: str) -> dict:
    response = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=30, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_run_without_sae_up_shows_in_sae_ups_prefect_ui_afterwards(settings):
    from prefect import flow
    from prefect.runtime import flow_run
    from prefect.settings import get_current_settings

    @flow(name="tiny")
    def tiny() -> str:
        return flow_run.id

    with _logged("infra.local_stack") as said, ls.prefect_for_run(settings, timeout=600):
        # Prefect's "View at" link goes where the history will be served.
        assert str(get_current_settings().ui_url) == ls.stack_prefect_ui()
        run_id = tiny()
    assert ls.history_database(settings).is_file()
    link = f"{ls.stack_prefect_ui()}/runs/flow-run/{run_id}"
    assert any("`sae up`, then open" in line and link in line for line in said), said

    urls = ls.stack_up(settings, timeout=600)
    assert urls["prefect"] == f"{ls.stack_prefect_ui()}/api"
    assert _flow_run(urls["prefect"], run_id)["state_type"] == "COMPLETED"
    # With `sae up` healthy a run records there directly, and nothing else serves its file.
    with ls.prefect_for_run(settings, timeout=600) as url:
        assert url == urls["prefect"]


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
