"""The OpenVINO backend of the bundled MiniLM: same vectors as torch, chosen by rule,
exported once and reused, and used by an `sae embed` shard.

One export (tens of seconds on 2 cores) is shared by the module through ``cache``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tasks.embed import local, openvino_backend, run
from tasks.embed.embedders import EmbedderError, make_embedder
from tests.samples import first_paper_texts

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def abstracts(arxiv_data) -> list[str]:
    return first_paper_texts(arxiv_data, 40)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ov_minilm(cache):
    return make_embedder("minilm", device="cpu", backend="openvino", cache_dir=cache)


def test_openvino_vectors_match_the_torch_path(ov_minilm, abstracts):
    torch_fp32 = make_embedder("minilm", device="cpu", backend="torch", precision="fp32")
    assert (ov_minilm.backend, ov_minilm.precision) == ("openvino", "fp32")
    assert (ov_minilm.name, ov_minilm.dim) == (torch_fp32.name, torch_fp32.dim)
    # Texts short and long in one batch, so padding is exercised.
    texts = ["Sparse autoencoders.", *abstracts]
    ours, ref = ov_minilm.embed(texts), torch_fp32.embed(texts)
    assert ours.shape == (41, 384) and ours.dtype == np.float32
    cos = np.sum(ours * ref, axis=1)
    assert cos.min() >= 0.9999, cos.min()
    assert float(np.sum(ours[1] * ref[2])) < 0.9  # rows are in their places


def test_backend_is_chosen_by_hardware(monkeypatch):
    assert local.choose_backend("auto", CPU, "fp32")[0] == "openvino"
    assert local.choose_backend("auto", CPU, "bf16")[0] == "torch"
    assert local.choose_backend("auto", torch.device("cuda"), "fp16")[0] == "torch"
    assert local.choose_backend("torch", CPU, "fp32")[0] == "torch"
    with pytest.raises(EmbedderError, match="runs on CPU"):
        local.choose_backend("openvino", torch.device("cuda"), "fp16")
    with pytest.raises(EmbedderError, match="runs fp32, not bf16"):
        local.choose_backend("openvino", CPU, "bf16")
    with pytest.raises(EmbedderError, match="unknown backend"):
        local.choose_backend("tensorrt", CPU, "fp32")


def test_embedder_backend_follows_the_cpu(monkeypatch, cache):
    monkeypatch.setattr(local, "cpu_bf16_feature", lambda: "avx512_bf16")
    native = make_embedder("minilm", device="cpu", cache_dir=cache)
    assert (native.backend, native.precision) == ("torch", "bf16")
    forced = make_embedder("minilm", device="cpu", backend="openvino", cache_dir=cache)
    assert (forced.backend, forced.precision) == ("openvino", "fp32")
    monkeypatch.setattr(local, "cpu_bf16_feature", lambda: None)
    plain = make_embedder("minilm", device="cpu", cache_dir=cache)
    assert (plain.backend, plain.precision) == ("openvino", "fp32")


def test_models_the_graph_cannot_stand_for_are_named():
    bert = SimpleNamespace(model_type="bert", hidden_act="gelu")
    assert openvino_backend.unsupported_reason(bert) is None
    roberta = SimpleNamespace(model_type="roberta", hidden_act="gelu")
    assert "roberta" in openvino_backend.unsupported_reason(roberta)
    relu = SimpleNamespace(model_type="bert", hidden_act="relu")
    assert "relu" in openvino_backend.unsupported_reason(relu)


def test_export_is_cached_and_reused(ov_minilm, cache, monkeypatch):
    path = ov_minilm.encoder.path
    assert path.parent.parent == cache / "onnx"
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporaries left

    def no_export(*_):
        raise AssertionError("exported again")

    monkeypatch.setattr(openvino_backend, "_export", no_export)
    again = make_embedder("minilm", device="cpu", backend="openvino", cache_dir=cache)
    assert again.encoder.path == path


def test_cache_key_follows_the_model_files(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    first = openvino_backend.cache_key(tmp_path)
    assert openvino_backend.cache_key(tmp_path) == first
    (tmp_path / "config.json").write_text('{"hidden_size": 16}')
    assert openvino_backend.cache_key(tmp_path) != first


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def half_export(_model, dest):
        dest.write_bytes(b"half a model")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(openvino_backend, "_export", half_export)
    with pytest.raises(RuntimeError, match="mid-export"):
        openvino_backend.cached_model(local.bundled_minilm_path(), tmp_path)
    assert [p for p in (tmp_path / "onnx").rglob("*") if p.is_file()] == []


def test_an_embed_shard_runs_on_openvino(arxiv_data, cache, monkeypatch):
    from infra.settings import get_settings
    from infra.store import Store
    from tasks.corpus.domains import get_domain
    from tasks.corpus.ingest import ingest_source
    from tasks.corpus.storage import read_papers
    from tasks.embed.manifest import Namespace

    monkeypatch.setattr(local, "cpu_bf16_feature", lambda: None)
    monkeypatch.setattr(run, "_EMBEDDERS", {})
    store = Store.from_settings(get_settings())
    cs = get_domain("cs.LG")
    ingest_source(store, cs, arxiv_data / "cs_lg.jsonl.gz", limit=6)
    pending = run.paper_texts(read_papers(store, cs))
    (shard,) = run.plan_shards(pending, 8, "minilm-l6-v2")
    result = run.embed_shard(
        store.root, store.storage_options, "minilm-l6-v2", "minilm", "cpu", shard,
        "auto", str(cache),
    )  # fmt: skip
    assert result["backend"] == "openvino" and result["n"] == 6
    ns = Namespace(store, "minilm-l6-v2")
    part = store.read_parquet(ns.part_path(shard.name))
    assert part["id"].to_list() == shard.ids
    vectors = np.stack(part["vector"].to_numpy())
    torch_fp32 = make_embedder("minilm", device="cpu", backend="torch", precision="fp32")
    assert np.sum(torch_fp32.embed(shard.texts) * vectors, axis=1).min() >= 0.9999
