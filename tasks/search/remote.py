"""A running ``sae serve`` that ``sae search`` asks instead of building an engine itself: a
cold search in a new process loads torch, the embedder, the papers and the model
(seconds); through a running server it costs the command's own start.

``sae serve`` records where it listens in ``$SAE_HOME/search/serve.json`` while it runs
(:func:`recorded`). ``sae search`` asks that server (:func:`ask`) when it serves the
domain over the same store and MLflow, and searches in its own process when no server is
recorded, when the recorded one does not answer (killed, or another program on its port)
or when it fails. Standard library only: this module is imported before anything heavy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.search.limits import SearchInputError

log = logging.getLogger(__name__)

SERVE_FILE = Path("search") / "serve.json"
#: A live server on this machine answers its status at once.
STATUS_TIMEOUT_S = 2.0
#: A first search may wait for the server to build its engine (minutes at 300k papers).
SEARCH_TIMEOUT_S = 600.0
#: Loopback needs no proxy, and an ``http_proxy`` in the environment must not get the query.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve_file(settings) -> Path:
    return settings.home / SERVE_FILE


def connect_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@contextlib.contextmanager
def recorded(settings, url: str, domains: list[str]) -> Iterator[None]:
    """``url`` recorded as this process's search server while the block runs."""
    path = serve_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"url": url, "pid": os.getpid(), "domains": domains, "data": _data_key(settings)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    try:
        yield
    finally:
        # A server started later owns the file now: leave it.
        if _read(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def find(settings, domain: str) -> dict[str, Any] | None:
    """The recorded server if it serves ``domain`` from this settings' store and MLflow."""
    doc = _read(serve_file(settings))
    if doc.get("data") != _data_key(settings) or domain not in doc.get("domains", []):
        return None
    return doc


def ask(server: dict[str, Any], body: dict[str, Any]) -> dict[str, Any] | None:
    """The server's answer to the search ``body`` (``/api/search``'s request), or None
    when it does not answer or fails (then the caller searches itself); bad input is
    raised as the server named it, as a search in this process would."""
    base = server["url"]
    try:
        with _OPENER.open(base + "api/status", timeout=STATUS_TIMEOUT_S) as answer:
            alive = json.load(answer).get("pid") == server["pid"]
    except (OSError, ValueError, AttributeError):  # gone, or another program on the port
        return None
    if not alive:
        return None
    request = urllib.request.Request(
        base + "api/search",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _OPENER.open(request, timeout=SEARCH_TIMEOUT_S) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        message = _error(exc)
        if exc.code < 500 and message:
            raise SearchInputError(message, exc.code) from None
        log.warning("sae serve at %s failed (%s); searching in this process", base, exc.code)
    except (OSError, ValueError) as exc:
        log.warning("sae serve at %s did not answer (%s); searching in this process", base, exc)
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _error(exc: urllib.error.HTTPError) -> str | None:
    try:
        return json.loads(exc.read()).get("error")
    except (OSError, ValueError, AttributeError):
        return None


def _data_key(settings) -> str:
    """Names the store and MLflow without writing either down (a URI may hold a password)."""
    return hashlib.sha256(f"{settings.store}\n{settings.tracking_uri}".encode()).hexdigest()[:16]
