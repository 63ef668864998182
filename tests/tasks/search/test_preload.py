"""`sae serve --preload`: engines built in the background while the server answers, and
the status route that says which are still loading."""

from __future__ import annotations

import os
import threading

from fastapi.testclient import TestClient

from tasks.search.app import create_app
from tasks.search.limits import SearchInputError
from tests.tasks.search.axes import engine_for, make_corpus


def test_preloading_answers_meanwhile_and_the_status_follows_it():
    release, builds = threading.Event(), []
    engine = engine_for(make_corpus())[0]

    def opener(domain, model, sweep):
        if domain == "astro-ph":
            raise SearchInputError("no sweep of astro-ph is recorded in MLflow", 404)
        assert release.wait(60)
        builds.append((domain, model, sweep))
        return engine

    client = TestClient(create_app(opener, ["cs.LG", "astro-ph"]))
    thread = client.app.state.engines.preload(["cs.LG", "astro-ph"])
    status = client.get("/api/status").json()  # answered while cs.LG builds
    assert status["pid"] == os.getpid() and status["loading"] == ["cs.LG", "astro-ph"]
    release.set()
    thread.join(60)
    status = client.get("/api/status").json()
    assert status["loading"] == []
    states = {e["domain"]: e["state"] for e in status["engines"]}
    assert states == {"cs.LG": "ready", "astro-ph": "failed"}
    answer = client.post("/api/search", json={"query": "q", "domain": "cs.LG"})
    assert answer.status_code == 200 and builds == [("cs.LG", "champion", None)]


def test_without_preloading_the_status_shows_an_engine_built_on_first_use():
    client = TestClient(create_app(lambda d, m, s: engine_for(make_corpus())[0], ["cs.LG"]))
    assert client.get("/api/status").json()["engines"] == []
    client.post("/api/search", json={"query": "q", "domain": "cs.LG", "model": "axes_3_12"})
    (engine,) = client.get("/api/status").json()["engines"]
    assert engine == {"domain": "cs.LG", "model": "axes_3_12", "sweep": None, "state": "ready"}
