"""One re-embed per domain at a time: a lease file in the store.

The lease is ``locks/reembed-{slug}.json``, created with an exclusive write (a hard link
locally, ``If-None-Match: *`` on S3), holding the owner's id, host, pid and an expiry
that a heartbeat pushes forward while the run lives. A second run waits up to ``wait_s``
for it, then gives up with :class:`ReembedBusyError` naming the file and its holder. A
lease whose expiry passed, or whose process is gone from this machine, is taken over.
The scheduled deployments also carry Prefect's deployment concurrency limit (1,
CANCEL_NEW), which stops a second scheduled run before it starts; the lease covers what
that limit cannot see: ``sae reembed`` from a shell, two deployments, two Prefect
servers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.store import Store, StoreError
from tasks.corpus.domains import Domain

log = logging.getLogger(__name__)

#: How long a lease lasts without a heartbeat: a run killed outright blocks others at most
#: this long (less on the same machine, where a dead pid is seen at once).
LEASE_TTL_S = 600.0
#: How often a live run pushes its lease's expiry forward.
LEASE_RENEW_S = 60.0


class LeaseError(RuntimeError):
    """The lease file cannot be read or written; the message names it."""


class ReembedBusyError(LeaseError):
    """Another re-embed of the domain holds the lease."""


class LeaseLostError(LeaseError):
    """The lease was taken over or removed while this run held it."""


class ReembedIncompleteError(RuntimeError):
    """Papers of the harvest window have no vector yet: the watermark stays where it was."""


def lease_path(domain: Domain) -> str:
    return f"locks/reembed-{domain.slug}.json"


def _now() -> datetime:
    return datetime.now(UTC)


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks (tells a live process from a reused pid)."""
    try:
        text = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - one read
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def _create(store: Store, rel: str, data: bytes) -> bool:
    try:
        return store.create(rel, data)
    except StoreError as exc:
        raise LeaseError(f"cannot create the lease {store.uri(rel)}: {exc}") from exc


@dataclass
class Lease:
    """A held lease. :meth:`held` keeps it alive and releases it at the end."""

    store: Store
    domain: Domain
    owner: str
    info: dict[str, Any]
    ttl_s: float = LEASE_TTL_S
    lost: str | None = field(default=None, repr=False)

    @property
    def rel(self) -> str:
        return lease_path(self.domain)

    @property
    def uri(self) -> str:
        return self.store.uri(self.rel)

    def _current(self) -> dict[str, Any] | None:
        return _read_lease(self.store, self.rel)

    def check(self) -> None:
        """Raises LeaseLostError unless the lease file still names this run."""
        if self.lost:
            raise LeaseLostError(self.lost)
        try:
            check_owner(self.store, self.domain, self.owner)
        except LeaseLostError as exc:
            self.lost = str(exc)
            raise

    def renew(self) -> None:
        self.check()
        expires = _now() + timedelta(seconds=self.ttl_s)
        self.info["expires_at"] = expires.isoformat(timespec="seconds")
        self.store.write_json(self.rel, self.info)

    def release(self) -> None:
        with contextlib.suppress(LeaseError, StoreError):
            current = self._current()
            if current is not None and current.get("owner") == self.owner:
                self.store.delete(self.rel)

    @contextlib.contextmanager
    def held(self, renew_s: float = LEASE_RENEW_S) -> Iterator[Lease]:
        """Renews the lease every ``renew_s`` seconds in a thread; releases it on exit."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(renew_s):
                try:
                    self.renew()
                except LeaseLostError as exc:
                    log.error("%s", exc)
                    return
                except Exception as exc:  # a store hiccup: try again at the next beat
                    log.warning("renewing the lease %s failed: %s", self.uri, exc)

        thread = threading.Thread(target=beat, name=f"lease-{self.domain.slug}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=10)
            self.release()


def check_owner(store: Store, domain: Domain, owner: str) -> None:
    """Raises LeaseLostError unless the domain's lease file names ``owner``."""
    rel = lease_path(domain)
    current = _read_lease(store, rel)
    if current is None or current.get("owner") != owner:
        holder = _describe(current) if current else "nobody (the file is gone)"
        raise LeaseLostError(
            f"the lease {store.uri(rel)} of this run ({owner}) now belongs to {holder}; "
            "another run may be harvesting the same window, so this one stops here"
        )


def _read_lease(store: Store, rel: str) -> dict[str, Any] | None:
    try:
        raw = store.read_bytes(rel)
    except FileNotFoundError:
        return None
    except StoreError as exc:
        raise LeaseError(str(exc)) from exc
    try:
        info = json.loads(raw)
        datetime.fromisoformat(info["expires_at"])
        str(info["owner"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LeaseError(
            f"the lease {store.uri(rel)} is unreadable ({exc}); if no re-embed of this "
            "domain is running, delete it"
        ) from exc
    return info


def _describe(info: dict[str, Any]) -> str:
    label = f" ({info['label']})" if info.get("label") else ""
    return (
        f"{info.get('owner')}{label}, pid {info.get('pid')} on {info.get('host')}, "
        f"since {info.get('acquired_at')}, until {info.get('expires_at')}"
    )


def _stale(info: dict[str, Any], now: datetime) -> str | None:
    """Why a lease can be taken over (expired, or its process is gone), else None."""
    expires = datetime.fromisoformat(info["expires_at"])
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires <= now:
        return f"it expired at {info['expires_at']}"
    same_machine = info.get("host") == socket.gethostname() and info.get("pid_ns") == (
        _pid_namespace() or "unknown"
    )
    pid = info.get("pid")
    if same_machine and isinstance(pid, int) and _process_start(pid) != info.get("pid_start"):
        return f"its process {pid} on {info.get('host')} is gone"
    return None


def acquire_lease(
    store: Store,
    domain: Domain,
    *,
    wait_s: float = 0.0,
    ttl_s: float = LEASE_TTL_S,
    label: str = "",
    poll_s: float = 1.0,
) -> Lease:
    """Takes the domain's re-embed lease, waiting up to ``wait_s`` for a holder to finish.

    Raises ReembedBusyError naming the lease file and its holder when it stays taken.
    """
    rel = lease_path(domain)
    owner = uuid.uuid4().hex
    pid = os.getpid()
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        now = _now()
        info = {
            "owner": owner,
            "label": label,
            "domain": domain.name,
            "host": socket.gethostname(),
            "pid": pid,
            "pid_ns": _pid_namespace() or "unknown",
            "pid_start": _process_start(pid),
            "acquired_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + timedelta(seconds=ttl_s)).isoformat(timespec="seconds"),
        }
        data = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
        if _create(store, rel, data):
            return Lease(store, domain, owner, info, ttl_s)
        current = _read_lease(store, rel)
        if current is None:  # released between our try and our read
            continue
        if current.get("owner") == owner:  # our create landed but its answer was lost
            return Lease(store, domain, owner, current, ttl_s)
        reason = _stale(current, now)
        if reason is not None:
            # Remove it only if it is still the stale one we judged, then race for it again.
            again = _read_lease(store, rel)
            if again is not None and again.get("owner") == current.get("owner"):
                log.warning("taking over the lease %s: %s", store.uri(rel), reason)
                store.delete(rel)
            continue
        if time.monotonic() >= deadline:
            raise ReembedBusyError(
                f"another re-embed of {domain.name} is running: {store.uri(rel)} is held by "
                f"{_describe(current)}. Nothing was done; try again later (or pass a wait), "
                "or delete that file if you are sure the run is dead"
            )
        if not announced:
            log.info("waiting up to %.0f s for %s (%s)", wait_s, rel, _describe(current))
            announced = True
        time.sleep(max(0.05, min(poll_s, deadline - time.monotonic())))
