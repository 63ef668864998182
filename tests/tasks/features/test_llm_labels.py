"""LLM labels against a local chat-completions stub: protocol, scores, cache, retries, faults."""

from __future__ import annotations

import json
import logging
import socket
import traceback

import pytest

from tasks.features import llm_labels
from tasks.features.llm_labels import (
    FIRES_AT,
    MAX_ABSTRACT_CHARS,
    PROMPT_VERSION,
    ChatClient,
    LabelAPIError,
    LabelCache,
    LLMLabeler,
    explain_messages,
    f1_score,
    pearson,
)
from tests.tasks.features.llm_stub_server import StubChatServer

KEY = "sk-test-llm-labels-0123456789abcdef"
CELL = "csLG_64_3072_1024"


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def stub():
    with StubChatServer(retry_after="7") as server:
        yield server


@pytest.fixture
def no_env_key(monkeypatch):
    for name in llm_labels.KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


def _client(stub, model="stub-model", **options) -> ChatClient:
    options.setdefault("sleep", Sleeps())
    return ChatClient(stub.url, model, KEY, **options)


def _labeler(stub, tmp_path, model="stub-model", **options) -> LLMLabeler:
    prices = {
        k: options.pop(k) for k in ("price_in_per_mtok", "price_out_per_mtok") if k in options
    }
    cache = LabelCache(tmp_path / "labels.jsonl")
    return LLMLabeler(_client(stub, model, **options), cache, cell=CELL, **prices)


def _feature(keyword: str = "quasar"):
    """Abstracts with ``keyword`` planted in the firing ones, and held-out ones of both kinds."""
    top = [f"We observe the {keyword} sample number {i} with a spectrograph." for i in range(5)]
    other = [
        f"We train a transformer on dataset number {i} with gradient descent." for i in range(5)
    ]
    heldout = [
        (f"A {keyword} survey reaching redshift {i}.", act)
        for i, act in enumerate((3.0, 2.5, 2.0, 1.5))
    ] + [(f"A benchmark of optimisers, variant {i}.", 0.0) for i in range(4)]
    return top, other, heldout


def _label(labeler: LLMLabeler, latent: int = 7, keyword: str = "quasar"):
    return labeler.label(latent, *_feature(keyword))


def _assert_no_key(exc: BaseException, client: object) -> None:
    assert KEY not in str(exc)
    assert KEY not in "".join(traceback.format_exception(exc))
    assert KEY not in repr(client) and KEY not in str(client)


# --- the protocol -----------------------------------------------------------------------


def test_planted_feature_is_labelled_and_scored(stub, tmp_path):
    labeler = _labeler(stub, tmp_path)
    result = _label(labeler)
    assert result.label == "quasar research"
    assert result.f1 == 1.0 and result.pearson is not None and result.pearson > 0.8
    assert (result.cached, result.error, result.latent) == (False, None, 7)
    assert len(stub.requests) == 2  # explain, predict
    for r in stub.requests:
        assert r.path == "/v1/chat/completions"
        assert r.headers["authorization"] == f"Bearer {KEY}"
        assert r.body["model"] == "stub-model"
        assert r.body["response_format"] == {"type": "json_object"}
        assert [m["role"] for m in r.body["messages"]] == ["system", "user"]
    explain, predict = (r.user for r in stub.requests)
    assert "quasar sample number 4" in explain and "transformer on dataset" in explain
    # the predict request sees the label and the held-out texts, never the firing examples
    assert "Label: quasar research" in predict and "spectrograph" not in predict
    assert predict.count("redshift") == 4 and predict.count("optimisers") == 4


def test_held_out_order_is_shuffled_and_mapped_back(stub, tmp_path):
    labeler = _labeler(stub, tmp_path)
    top, other, heldout = _feature()
    result = labeler.label(3, top, other, heldout)
    predict = stub.requests[1].user
    positions = [predict.index(text) for text, _ in heldout]
    assert positions != sorted(positions)  # activating ones are not simply listed first
    assert result.f1 == 1.0  # scores went back to the right abstracts


def test_scores_mark_firing_at_the_threshold():
    assert FIRES_AT == 5.0
    assert f1_score([True, True, False, False], [True, False, True, False]) == 0.5
    assert f1_score([False, False], [True, False]) is None
    assert pearson([1, 1, 1], [0.0, 2.0, 1.0]) == 0.0
    assert pearson([9, 1], [2.0, 0.0]) == pytest.approx(1.0)


def test_abstracts_are_clipped_to_one_bounded_line():
    long = "word " * 2000 + "\nsecond line"
    user = explain_messages([long], ["short"])[1]["content"]
    line = next(x for x in user.splitlines() if x.startswith("1. word"))
    assert len(line) <= MAX_ABSTRACT_CHARS + 3 and line.endswith("…")


def test_no_held_out_abstracts_means_no_predict_request(stub, tmp_path):
    top, other, _ = _feature()
    result = _labeler(stub, tmp_path).label(1, top, other, [])
    assert result.label == "quasar research" and (result.f1, result.pearson) == (None, None)
    assert len(stub.requests) == 1


# --- the cache --------------------------------------------------------------------------


def test_rerun_hits_the_cache_and_a_new_version_or_model_misses(stub, tmp_path, monkeypatch):
    first = _label(_labeler(stub, tmp_path))
    assert len(stub.requests) == 2

    again = _labeler(stub, tmp_path)
    hit = _label(again)
    assert len(stub.requests) == 2  # no new request
    assert hit.cached and (hit.label, hit.f1, hit.pearson) == (
        first.label,
        first.f1,
        pytest.approx(first.pearson),
    )
    assert (hit.prompt_tokens, hit.completion_tokens) == (0, 0)
    assert again.totals().cached == 1 and again.totals().requests == 0

    _label(_labeler(stub, tmp_path, model="other-model"))
    assert len(stub.requests) == 4

    monkeypatch.setattr(llm_labels, "PROMPT_VERSION", PROMPT_VERSION + 1)
    bumped = _label(_labeler(stub, tmp_path))
    assert not bumped.cached and len(stub.requests) == 6

    lines = (tmp_path / "labels.jsonl").read_text().splitlines()
    keys = [(r["model"], r["prompt_version"]) for r in map(json.loads, lines)]
    assert keys == [
        ("stub-model", PROMPT_VERSION),
        ("other-model", PROMPT_VERSION),
        ("stub-model", PROMPT_VERSION + 1),
    ]


def test_a_torn_last_line_is_ignored_and_appends_start_fresh(stub, tmp_path):
    _label(_labeler(stub, tmp_path), latent=1)
    path = tmp_path / "labels.jsonl"
    with path.open("ab") as f:  # a crash in the middle of writing latent 2
        f.write(b'{"cell": "csLG_64_3072_1024", "latent": 2, "lab')

    labeler = _labeler(stub, tmp_path)
    assert _label(labeler, latent=1).cached
    assert labeler.cache.skipped_lines == 1
    assert not _label(labeler, latent=2).cached
    assert len(stub.requests) == 4

    fresh = LabelCache(path)
    assert len(fresh) == 2 and fresh.skipped_lines == 1
    assert _label(LLMLabeler(_client(stub), fresh, cell=CELL), latent=2).cached
    assert len(stub.requests) == 4


# --- HTTP retries and failures ----------------------------------------------------------


def test_429_waits_as_asked_then_succeeds(stub, tmp_path):
    stub.faults.append("429")
    sleeps = Sleeps()
    result = _label(_labeler(stub, tmp_path, sleep=sleeps))
    assert result.label == "quasar research"
    assert sleeps == [7.0] and len(stub.requests) == 3


def test_retry_after_is_capped(stub, tmp_path):
    stub.retry_after = "3600"
    stub.faults.append("429")
    sleeps = Sleeps()
    _label(_labeler(stub, tmp_path, sleep=sleeps, max_backoff_s=60.0))
    assert sleeps == [60.0]


def test_5xx_are_retried_with_backoff(stub, tmp_path):
    stub.faults += ["500", "503"]
    sleeps = Sleeps()
    result = _label(_labeler(stub, tmp_path, sleep=sleeps, backoff_s=1.0))
    assert result.error is None and result.f1 == 1.0
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # 2**n with jitter in [0.5, 1]
    assert len(stub.requests) == 4


def test_retries_exhausted_name_the_endpoint_without_the_key(stub, tmp_path):
    stub.faults += [(500, {}, {"error": {"message": f"boom for {KEY}"}})] * 3
    labeler = _labeler(stub, tmp_path, max_retries=2)
    with pytest.raises(LabelAPIError) as info:
        _label(labeler)
    message = str(info.value)
    assert f"{stub.url}/chat/completions" in message
    assert "gave up after 3 attempts; last failure: HTTP 500" in message
    assert len(stub.requests) == 3
    _assert_no_key(info.value, labeler.client)
    assert len(labeler.cache) == 0


def test_connection_errors_are_retried(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    client = ChatClient(f"http://127.0.0.1:{port}/v1", "m", KEY, max_retries=2, sleep=sleeps)
    with pytest.raises(LabelAPIError, match="gave up after 3 attempts; last failure: Connect"):
        client.complete([{"role": "user", "content": "JSON please"}])
    assert len(sleeps) == 2 and client.attempts == 3


def test_401_fails_at_once_with_the_scrubbed_server_message(stub, tmp_path):
    stub.faults.append("401")
    labeler = _labeler(stub, tmp_path)
    with pytest.raises(LabelAPIError, match=r"HTTP 401.*Incorrect API key provided") as info:
        _label(labeler)
    assert len(stub.requests) == 1 and labeler.client.http.attempts == 1
    _assert_no_key(info.value, labeler.client)


def test_other_4xx_fail_at_once(stub):
    stub.faults.append((400, {}, {"error": {"message": "model not found"}}))
    with pytest.raises(LabelAPIError, match="HTTP 400: model not found"):
        _client(stub).complete([{"role": "user", "content": "JSON"}])
    assert len(stub.requests) == 1


def test_key_from_the_environment(stub, no_env_key, monkeypatch):
    with pytest.raises(LabelAPIError, match="no API key"):
        ChatClient(stub.url, "stub-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fallback-key")
    monkeypatch.setenv("SAE_LABEL_API_KEY", "project-key")
    ChatClient(stub.url, "stub-model").complete([{"role": "user", "content": "JSON"}])
    assert stub.requests[0].headers["authorization"] == "Bearer project-key"


# --- answers that cannot be used -------------------------------------------------------


def test_a_malformed_answer_is_asked_again_with_a_note(stub, tmp_path):
    stub.faults.append("malformed")
    labeler = _labeler(stub, tmp_path)
    result = _label(labeler)
    assert result.label == "quasar research" and result.error is None
    assert len(stub.requests) == 3
    first, second = stub.requests[0].user, stub.requests[1].user
    assert second.startswith(first) and "could not be used (not JSON" in second
    assert labeler.totals().requests == 3


@pytest.mark.parametrize("fault", ["wrong_count", "out_of_range"])
def test_a_malformed_prediction_is_asked_again(stub, tmp_path, fault):
    stub.faults += [None, fault]
    result = _label(_labeler(stub, tmp_path))
    assert result.f1 == 1.0 and result.error is None
    assert len(stub.requests) == 3


@pytest.mark.parametrize(
    ("faults", "problem"),
    [
        (["malformed", "malformed"], "malformed answer: not JSON"),
        ([None, "wrong_count", "wrong_count"], "malformed answer: 7 predictions for 8 abstracts"),
        ([None, "out_of_range", "out_of_range"], "outside 0-10"),
    ],
)
def test_malformed_twice_is_recorded_and_not_cached(stub, tmp_path, faults, problem):
    stub.faults += faults
    labeler = _labeler(stub, tmp_path)
    result = _label(labeler)
    assert result.error is not None and problem in result.error
    assert result.error.startswith("malformed answer: ")
    assert (result.label, result.f1, result.pearson, result.cached) == (None, None, None, False)
    assert len(stub.requests) == len(faults)
    assert labeler.totals().errors == 1 and len(labeler.cache) == 0

    again = _label(_labeler(stub, tmp_path))  # not cached: asked again, and fine this time
    assert again.label == "quasar research" and not again.cached


@pytest.mark.parametrize("fault", ["refusal", "refusal_field", "content_filter"])
def test_refusals_are_recorded_not_raised_nor_retried(stub, tmp_path, fault):
    stub.faults.append(fault)
    labeler = _labeler(stub, tmp_path)
    result = _label(labeler)
    assert result.error == "refused" and result.label is None
    assert len(stub.requests) == 1 and len(labeler.cache) == 0


def test_a_refused_prediction_is_recorded(stub, tmp_path):
    stub.faults += [None, "content_filter"]
    result = _label(_labeler(stub, tmp_path))
    assert (result.error, result.label, result.f1) == ("refused", None, None)
    assert len(stub.requests) == 2


# --- totals and logs --------------------------------------------------------------------


def test_token_and_cost_totals_add_up(stub, tmp_path):
    labeler = _labeler(stub, tmp_path, price_in_per_mtok=2.5, price_out_per_mtok=10.0)
    stub.faults += [None, None, "malformed"]  # the second feature's explain is asked twice
    results = [_label(labeler, latent=n, keyword=w) for n, w in ((1, "quasar"), (2, "lensing"))]
    results.append(_label(labeler, latent=1))  # cached
    assert [r.label for r in results] == ["quasar research", "lensing research", "quasar research"]
    totals = labeler.totals()
    sent_in = sum(u["prompt_tokens"] for u in stub.usage)
    sent_out = sum(u["completion_tokens"] for u in stub.usage)
    assert (totals.prompt_tokens, totals.completion_tokens) == (sent_in, sent_out)
    assert sent_in > 0 and sent_out > 0
    assert totals.prompt_tokens == sum(r.prompt_tokens for r in results)
    assert totals.completion_tokens == sum(r.completion_tokens for r in results)
    assert (totals.requests, totals.cached, totals.features, totals.errors) == (5, 1, 3, 0)
    assert totals.cost == pytest.approx((sent_in * 2.5 + sent_out * 10.0) / 1e6)

    assert _labeler(stub, tmp_path).totals().cost is None
    with pytest.raises(ValueError, match="both prices"):
        _labeler(stub, tmp_path, price_in_per_mtok=1.0)


def test_no_key_and_no_prompt_in_the_logs(stub, tmp_path, caplog):
    stub.faults += ["429", "500", None, "malformed"]
    # On the module's own logger: an earlier test's setup_logging may hold "tasks" at INFO.
    with caplog.at_level(logging.DEBUG, logger="tasks.features.llm_labels"):
        labeler = _labeler(stub, tmp_path)
        _label(labeler, latent=1)
        stub.faults.append((503, {}, {"error": {"message": f"overloaded for {KEY}"}}))
        _label(labeler, latent=2, keyword="lensing")
        stub.faults.append("401")
        with pytest.raises(LabelAPIError):
            _label(labeler, latent=3, keyword="pulsar")
    assert caplog.records
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert KEY not in logged
    assert "spectrograph" not in logged  # no abstract, so no prompt
    assert not any(
        r.levelno >= logging.INFO and "research" in r.getMessage() for r in caplog.records
    )
    features = [r for r in caplog.records if r.getMessage().startswith(f"{CELL} latent ")]
    assert [r.levelno for r in features] == [logging.DEBUG, logging.DEBUG]
