"""Joining a cluster through Ray Client: the one failure that is worth another try.

The failure itself (the head's per-driver server dying at start) cannot be provoked on
purpose; its message is Ray's own, as `ray.init("ray://...")` raises it."""

from __future__ import annotations

import pytest

from infra import ray_runtime

DIED = (
    "Initialization failure from server:\nTraceback (most recent call last):\n"
    "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for "
    "detailed logs.\n"
)

#: The same death, when the head's proxy inspects the process before it is reaped.
ZOMBIE = (
    "Initialization failure from server:\nTraceback (most recent call last):\n"
    '  File ".../ray/util/client/server/proxier.py", line 765, in Datapath\n'
    "psutil.ZombieProcess: PID still exists but it's a zombie (pid=31702)\n"
)


@pytest.fixture
def calls(monkeypatch):
    import ray

    monkeypatch.setattr(ray_runtime, "_CLIENT_RETRY_PAUSE_S", 0.0)
    seen: list[str] = []
    outcomes: list[BaseException | None] = []

    def init(address, **kwargs):
        seen.append(f"init {address}")
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: seen.append("shutdown"))
    return seen, outcomes


@pytest.mark.parametrize("message", [DIED, ZOMBIE])
def test_a_client_server_that_died_at_start_is_asked_for_again(calls, message):
    seen, outcomes = calls
    outcomes += [ConnectionAbortedError(message), None]
    ray_runtime._join("ray://head:10001", {})
    assert seen == ["init ray://head:10001", "shutdown", "init ray://head:10001"]


def test_it_is_asked_three_times_at_most(calls):
    seen, outcomes = calls
    outcomes += [ConnectionAbortedError(DIED)] * 3
    with pytest.raises(ConnectionAbortedError, match="Starting Ray client server failed"):
        ray_runtime._join("ray://head:10001", {})
    assert seen.count("init ray://head:10001") == 3


def test_other_connection_errors_are_not_retried(calls):
    seen, outcomes = calls
    outcomes += [ConnectionError("InvalidAuthToken")]
    with pytest.raises(ConnectionError, match="InvalidAuthToken"):
        ray_runtime._join("head:6379", {})
    assert seen == ["init head:6379"]
