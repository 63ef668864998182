"""`sae search` through a running `sae serve` (:mod:`tasks.search.remote`) over the axis
SAE: the address file, the answer the engine gives, bad input named as the server names
it, and a server that is gone or fails leaving the search to the command's process."""

from __future__ import annotations

import json
import os
import socket

import pytest
from typer.testing import CliRunner

from flows.cli import app as cli
from flows.search_cli import search_text
from infra.settings import Settings, get_settings
from tasks.search import remote
from tasks.search.app import create_app
from tasks.search.limits import SearchInputError
from tests.tasks.search.axes import engine_for, make_corpus
from tests.tasks.search.serving import serving

runner = CliRunner()
BODY = {"query": "q", "domain": "cs.LG", "strengths": {"6": 9.0}, "top": 7}


@pytest.fixture()
def engine():
    return engine_for(make_corpus())[0]


@pytest.fixture()
def url(engine):
    with serving(create_app(lambda d, m, s: engine, ["cs.LG"])) as url:
        yield url


def answer_of(engine, strengths=None, top=7) -> dict:
    return engine.search("q", strengths or {6: 9.0}, top).as_dict(engine)


def test_a_recorded_server_answers_as_its_engine_and_names_bad_input(engine, url):
    settings = get_settings()
    with remote.recorded(settings, url, ["cs.LG"]):
        server = remote.find(settings, "cs.LG")
        assert server["url"] == url and server["pid"] == os.getpid()
        assert remote.find(settings, "astro-ph") is None  # not served there
        elsewhere = Settings(home=settings.home, store=str(settings.home / "other-store"))
        assert remote.find(elsewhere, "cs.LG") is None  # another store's papers
        got = remote.ask(server, BODY)
        assert {k: v for k, v in got.items() if not k.endswith("_ms")} == answer_of(engine)
        with pytest.raises(SearchInputError, match="feature 99 does not exist") as bad:
            remote.ask(server, {**BODY, "strengths": {"99": 1}})
        assert bad.value.status == 400
    assert not remote.serve_file(settings).exists()


def test_sae_search_prints_the_servers_answer_as_its_own(engine, url):
    with remote.recorded(get_settings(), url, ["cs.LG"]):
        args = ["search", "q", "--boost", "6=9", "--top", "7"]
        as_json = runner.invoke(cli, [*args, "--json"])
        assert as_json.exit_code == 0, as_json.output
        assert json.loads(as_json.stdout) == answer_of(engine)
        text = runner.invoke(cli, args)
        assert text.stdout == search_text(answer_of(engine)) + "\n"
        bad = runner.invoke(cli, ["search", "q", "--boost", "99=1"])
        assert bad.exit_code == 2 and "feature 99 does not exist in axes_3_12" in bad.output
        empty = runner.invoke(cli, ["search", " "])
        assert empty.exit_code == 2 and "the query is empty" in empty.output


def test_a_server_gone_not_ours_or_failing_leaves_the_search_to_this_process(
    engine, url, monkeypatch
):
    settings = get_settings()
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with remote.recorded(settings, f"http://127.0.0.1:{port}/", ["cs.LG"]):
        assert remote.ask(remote.find(settings, "cs.LG"), BODY) is None  # killed
    assert remote.ask({"url": url, "pid": os.getpid() + 1}, BODY) is None  # another's port

    def broken(*a, **kw):
        raise RuntimeError("internals")

    monkeypatch.setattr(engine, "search", broken)
    assert remote.ask({"url": url, "pid": os.getpid()}, BODY) is None  # 500


def test_a_server_started_later_keeps_its_address_file():
    settings = get_settings()
    path = remote.serve_file(settings)
    with remote.recorded(settings, "http://127.0.0.1:1/", ["cs.LG"]):
        newer = {"url": "http://127.0.0.1:2/", "pid": os.getpid() + 1, "domains": ["cs.LG"]}
        path.write_text(json.dumps(newer))
    assert json.loads(path.read_text()) == newer


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8/"),
        ("0.0.0.0", "http://127.0.0.1:8/"),
        ("::", "http://[::1]:8/"),
        ("localhost", "http://localhost:8/"),
    ],
)
def test_a_client_on_this_machine_reaches_any_listening_address(host, url):
    assert remote.connect_url(host, 8) == url
