"""The search server's API (:mod:`tasks.search.app`) over the axis SAE: answers equal the
engine's, bad input answers 4xx with a message and never a traceback."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from tasks.search.app import create_app
from tasks.search.limits import ADD_STRENGTH, MAX_STRENGTH, STRENGTH_UNIT, SearchInputError
from tests.tasks.search.axes import D, engine_for, make_corpus


class Opener:
    """Builds the axis engine for cs.LG's champion, slowly, counting builds."""

    def __init__(self, doc: bool = True):
        self.builds, self.doc = 0, doc

    def __call__(self, domain, model, sweep):
        if model not in ("champion", "axes_3_12"):
            raise SearchInputError(f"sweep s1 has no cell {model!r}", 404)
        self.builds += 1
        time.sleep(0.2)  # widens the window two first requests race in
        return engine_for(make_corpus(), doc=self.doc)[0]


@pytest.fixture()
def opener():
    return Opener()


@pytest.fixture()
def client(opener):
    models = {"sweep": "s1", "champion": "axes_3_12", "models": ["champion", "axes_3_12"]}

    def list_models(domain):
        if domain == "astro-ph":
            raise SearchInputError("no sweep of astro-ph is recorded in MLflow", 404)
        return models

    app = create_app(opener, ["cs.LG", "astro-ph"], list_models)
    return TestClient(app, raise_server_exceptions=False)


def body(**kw):
    return {"query": "q", "domain": "cs.LG", **kw}


def test_the_page_and_its_menus(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text
    menus = client.get("/api/models").json()
    assert menus["domains"]["cs.LG"]["models"] == ["champion", "axes_3_12"]
    assert "no sweep of astro-ph" in menus["domains"]["astro-ph"]["problem"]
    assert (menus["add_strength"], menus["max_strength"]) == (ADD_STRENGTH, MAX_STRENGTH)
    assert menus["strength_unit"] == STRENGTH_UNIT  # the page's hint says it


def test_a_search_answers_what_the_engine_finds(client):
    engine = engine_for(make_corpus())[0]
    for strengths in ({}, {"6": 9.0, "0": 0}):
        got = client.post("/api/search", json=body(strengths=strengths, top=7)).json()
        want = engine.search("q", {int(k): v for k, v in strengths.items()}, 7)
        assert [h["id"] for h in got["hits"]] == [h.id for h in want.hits]
        assert [f["id"] for f in got["features"]] == [f.id for f in want.features]
        assert got["edited"] == bool(strengths)
        assert got["cell"] == "axes_3_12" and got["has_labels"]
        for h in got["hits"]:
            assert h["driver_labels"] == [[f"term{d}", f"other{d}"] for d in h["drivers"]]


def test_concurrent_first_requests_build_the_engine_once(client, opener):
    answers = []

    def ask():
        answers.append(client.post("/api/search", json=body()).status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 4 and opener.builds == 1


@pytest.mark.parametrize(
    ("request_body", "status", "says"),
    [
        (body(query=""), 400, "the query is empty"),
        (body(query="x" * 5000), 400, "at most 4000"),
        (body(strengths={str(D + 5): 1}), 400, f"feature {D + 5} does not exist"),
        (body(strengths={"7": "high"}), 400, "strength 'high' is not a number"),
        (body(top=0), 400, "top must be"),
        (body(domain="math.AG"), 404, "domain 'math.AG' is not served here"),
        (body(model="csLG_9_9_9"), 404, "has no cell 'csLG_9_9_9'"),
        (body(top="ten"), 400, "top: Input should be a valid integer"),
        (body(strengths=[1, 2]), 400, "strengths: Input should be a valid dictionary"),
        ({"query": "q"}, 400, "domain: Field required"),
    ],
)
def test_bad_input_answers_4xx_naming_the_problem(client, request_body, status, says):
    answer = client.post("/api/search", json=request_body)
    assert answer.status_code == status
    assert says in answer.json()["error"]
    assert "Traceback" not in answer.text


def test_a_body_that_is_not_json_is_refused(client):
    answer = client.post(
        "/api/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400 and "bad request" in answer.json()["error"]


def test_a_failure_inside_answers_500_without_its_traceback(client, opener, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("secret internals")

    engine = client.app.state.engines.get("cs.LG", "champion", None)
    monkeypatch.setattr(engine, "search", broken)
    answer = client.post("/api/search", json=body())
    assert answer.status_code == 500
    assert "RuntimeError" in answer.json()["error"] and "secret internals" not in answer.text


def test_cards_are_the_feature_browser_page_or_a_404_saying_how_to_make_them():
    ok = TestClient(create_app(Opener(doc=True), ["cs.LG"]))
    page = ok.get("/cards/cs.LG/champion")
    assert page.status_code == 200 and 'id="features-data"' in page.text
    bare = TestClient(create_app(Opener(doc=False), ["cs.LG"]))
    answer = bare.get("/cards/cs.LG/champion")
    assert answer.status_code == 404 and "sae features cs.LG" in answer.json()["error"]
