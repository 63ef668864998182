"""The model card (:mod:`tasks.interop.card`): front matter that parses as YAML with what
model hubs read, and the cell's metrics, data, embedder and training settings."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tasks.interop.card import MINILM_HUB, CardFacts, hub_model, render_card

FACTS = CardFacts(
    fmt="saelens",
    domain="cs.LG",
    cell="csLG_32_3072_256",
    sweep_id="cslg-0123456789ab",
    d_in=384,
    n_latents=3072,
    k=32,
    arch="topk",
    metrics={"nmse": 0.48921, "dead_fraction": 0.003, "l0": 32.0, "retrieval_recall_at_10": 0.6},
    data_snapshot="cslg-aaaaaaaaaaaa",
    n_train=1900,
    n_eval=100,
    embedder="minilm-l6-v2",
    embedder_spec="minilm",
    train={"batch_size": 256, "lr": 0.001, "epochs": 10, "adam_betas": [0.9, 0.999]},
    code_version="abc123",
)


def split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_front_matter_and_body_of_an_export():
    meta, body = split(render_card(FACTS))
    assert meta["library_name"] == "saelens"
    assert {"saelens", "sparse-autoencoder", "arxiv", "cs.LG", "minilm-l6-v2"} <= set(meta["tags"])
    assert meta["base_model"] == MINILM_HUB
    assert body.lstrip().startswith("# csLG_32_3072_256: a TopK SAE over minilm-l6-v2")
    assert "SAE.load_from_disk" in body and "apply_b_dec_to_input: true" in body
    assert "| nmse | 0.4892 |" in body and "| retrieval_recall_at_10 | 0.6 |" in body
    assert "| act_mean |" not in body  # not measured, not shown
    assert "snapshot `cslg-aaaaaaaaaaaa`: 1,900 training and 100 held-out papers" in body
    assert "| batch_size | 256 |" in body and "| adam_betas | [0.9, 0.999] |" in body
    assert "sweep `cslg-0123456789ab`" in body and "`abc123`" in body


def test_our_format_and_an_imported_cell():
    facts = dataclasses.replace(FACTS, fmt="safetensors", train=None, embedder_spec="openai:x")
    meta, body = split(render_card(facts))
    assert meta["library_name"] == "arxiv-sae" and "saelens" not in meta["tags"]
    assert "base_model" not in meta
    assert "TopKSAE.load" in body and "not trained here" in body
    assert "fire on none of the domain's papers" in body


@pytest.mark.parametrize(
    ("spec", "hub"),
    [
        ("minilm", MINILM_HUB),
        ("st:BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5"),
        ("st:/no/such/local/model", None),
        ("openai:text-embedding-3-small", None),
        ("", None),
    ],
)
def test_hub_model(spec, hub):
    assert hub_model(spec) == hub
