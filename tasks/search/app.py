"""The search page's server (``sae serve``): one HTML page and a small JSON API over
:class:`SearchEngine` s, one per (domain, model, sweep), built on first use and kept.

    GET  /                         the page
    GET  /api/models               per domain: its sweep and cells, or why there is none
    GET  /api/status               the server's pid and its engines: loading, ready, failed
    POST /api/search               {query, domain, model, sweep, strengths: {id: w}, top}
    GET  /cards/{domain}/{model}   the cell's feature browser page (``#f<id>`` opens a card)

Bad input answers 4xx with ``{"error": message}``; nothing else reaches the user as a
stack trace. Queries are POSTed, so they stay out of access logs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from tasks.features.browser import render_browser
from tasks.search.engine import SearchEngine
from tasks.search.limits import (
    ADD_STRENGTH,
    MAX_STRENGTH,
    MAX_TOP,
    STRENGTH_UNIT,
    SearchInputError,
)
from tasks.sweep.track import CHAMPION

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
OpenEngine = Callable[[str, str, str | None], SearchEngine]


class SearchRequest(BaseModel):
    query: str = ""
    domain: str
    model: str = "champion"
    sweep: str | None = None
    strengths: dict[str, Any] = Field(default_factory=dict)
    top: int = 10


class Engines:
    """Engines by (domain, model, sweep), each built once even under concurrent requests;
    a build that failed is retried by the next request."""

    def __init__(self, open_engine: OpenEngine):
        self._open = open_engine
        self._engines: dict[tuple, SearchEngine] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._states: dict[tuple, str] = {}  # loading, ready or failed
        self._guard = threading.Lock()

    def get(self, domain: str, model: str, sweep: str | None) -> SearchEngine:
        key = (domain, model, sweep or None)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._engines:
                self._states[key] = "loading"
                try:
                    self._engines[key] = self._open(domain, model, sweep or None)
                except Exception:
                    self._states[key] = "failed"
                    raise
                self._states[key] = "ready"
            return self._engines[key]

    def preload(self, domains: list[str]) -> threading.Thread:
        """Builds each domain's champion engine, one after the other, in a thread: the
        server answers meanwhile, and a search waits only for its own engine."""
        keys = [(domain, CHAMPION, None) for domain in domains]
        for key in keys:  # said at once, so that the page's first look shows them
            self._states.setdefault(key, "loading")

        def build() -> None:
            for key in keys:
                try:
                    self.get(*key)
                except SearchInputError as exc:
                    log.warning("%s: nothing to preload (%s)", key[0], exc)
                except Exception:
                    log.exception("%s: preloading its engine failed", key[0])

        thread = threading.Thread(target=build, name="preload", daemon=True)
        thread.start()
        return thread

    def states(self) -> list[dict]:
        return [
            {"domain": d, "model": m, "sweep": s, "state": state}
            for (d, m, s), state in list(self._states.items())
        ]


def create_app(
    open_engine: OpenEngine,
    domains: list[str],
    list_models: Callable[[str], dict] | None = None,
) -> FastAPI:
    """``open_engine(domain, model, sweep)`` builds an engine; ``list_models(domain)``
    says which sweep and cells a domain has (for the page's menus)."""
    app = FastAPI(title="arxiv-sae search", docs_url=None, redoc_url=None, openapi_url=None)
    engines = Engines(open_engine)
    app.state.engines = engines

    @app.exception_handler(SearchInputError)
    async def _bad_input(request: Request, exc: SearchInputError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("search server: unexpected failure")
        message = f"the server failed ({type(exc).__name__}); its log has the details"
        return JSONResponse({"error": message}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/models")
    def models() -> dict:
        out = {}
        for domain in domains:
            try:
                out[domain] = list_models(domain) if list_models else {"models": ["champion"]}
            except SearchInputError as exc:
                out[domain] = {"models": [], "problem": str(exc)}
        return {
            "domains": out,
            "add_strength": ADD_STRENGTH,
            "max_strength": MAX_STRENGTH,
            "strength_unit": STRENGTH_UNIT,
            "max_top": MAX_TOP,
        }

    @app.get("/api/status")
    def status() -> dict:
        states = engines.states()
        loading = [e["domain"] for e in states if e["state"] == "loading"]
        return {"pid": os.getpid(), "loading": list(dict.fromkeys(loading)), "engines": states}

    @app.post("/api/search")
    def search(req: SearchRequest) -> dict:
        if req.domain not in domains:
            raise SearchInputError(
                f"domain {req.domain!r} is not served here; this server has {', '.join(domains)}",
                404,
            )
        t0 = time.perf_counter()
        engine = engines.get(req.domain, req.model, req.sweep)
        t1 = time.perf_counter()
        result = engine.search(req.query, req.strengths, req.top)
        return result.as_dict(engine) | {
            "load_ms": round((t1 - t0) * 1000, 1),
            "search_ms": round((time.perf_counter() - t1) * 1000, 1),
        }

    @app.get("/cards/{domain}/{model}", response_class=HTMLResponse)
    def cards(domain: str, model: str, sweep: str | None = None) -> str:
        if domain not in domains:
            raise SearchInputError(f"domain {domain!r} is not served here", 404)
        engine = engines.get(domain, model, sweep)
        if engine.document is None:
            raise SearchInputError(
                f"{engine.cell} has no feature cards yet; run `sae features {domain} "
                f"--sweep {engine.sweep_id} --cells {engine.cell}`",
                404,
            )
        return render_browser(engine.document)

    return app
