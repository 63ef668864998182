"""Labels scored by their embedding: a toy embedder whose phrases land where their words'
papers lie, the threshold against a brute-force fit, the held-out papers kept out of the
fit, a corpus whose embedder cannot run here, and the bundled MiniLM end to end."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from infra.store import Store
from sae.codes import SparseCodes
from tasks.embed.manifest import Namespace
from tasks.features.label_scores import (
    EmbedScore,
    embed_texts,
    fit_thresholds,
    label_phrase,
    score_cell,
    score_labels,
    summarize,
)
from tasks.features.labels import FeatureLabel

D = 64
TOPICS = [["graph", "neural"], ["quantum", "spin"], ["galaxy", "cluster"]]


class WordEmbedder:
    """A phrase's vector is the normalised sum of its words' fixed random vectors."""

    name, dim, max_tokens = "toy-words", D, 64

    def __init__(self):
        self.calls: list[int] = []

    def embed(self, texts):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), D), np.float32)
        for i, text in enumerate(texts):
            for word in text.replace(",", " ").split():
                seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
                out[i] += np.random.default_rng(seed).standard_normal(D)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _corpus(noise: float = 0.9, seed: int = 0):
    """900 papers, 300 per topic, near their topic's phrase; latent t fires on topic t's
    papers (stronger the closer); one paper in five held out."""
    rng = np.random.default_rng(seed)
    topic_TD = WordEmbedder().embed([label_phrase(t) for t in TOPICS])
    topic_N = np.repeat(np.arange(3), 300)
    x_ND = topic_TD[topic_N] + noise * rng.standard_normal((900, D)) / np.sqrt(D)
    x_ND = (x_ND / np.linalg.norm(x_ND, axis=1, keepdims=True)).astype(np.float32)
    act = np.maximum((x_ND * topic_TD[topic_N]).sum(1), 0.01).astype(np.float32)
    codes = SparseCodes(act[:, None], topic_N[:, None].astype(np.int32), 3)
    heldout_N = np.arange(900) % 5 == 0
    return x_ND, codes, heldout_N


def test_a_matching_label_scores_high_and_a_wrong_one_low():
    x_ND, codes, heldout_N = _corpus()
    embedder = WordEmbedder()
    right = embed_texts(embedder, [label_phrase(t) for t in TOPICS])
    wrong = embed_texts(embedder, [label_phrase(TOPICS[(t + 1) % 3]) for t in range(3)])
    good = score_labels(right, [0, 1, 2], x_ND, codes, heldout_N)
    bad = score_labels(wrong, [0, 1, 2], x_ND, codes, heldout_N)
    for g, b in zip(good, bad, strict=True):
        assert g.f1 > 0.9 and g.pearson > 0.7, g
        assert b.f1 < g.f1 - 0.25 and b.pearson < 0.0, b
    # Batched by the embedder's calls, two labels per call here.
    embedder.calls.clear()
    embed_texts(embedder, ["a", "b", "c"], batch=2)
    assert embedder.calls == [2, 1]


def test_the_threshold_is_fit_on_label_train_papers_only():
    x_ND, codes, heldout_N = _corpus()
    label_LD = embed_texts(WordEmbedder(), [label_phrase(t) for t in TOPICS])
    before = score_labels(label_LD, [0, 1, 2], x_ND, codes, heldout_N)
    moved = x_ND.copy()
    rng = np.random.default_rng(9)
    moved[heldout_N] = rng.standard_normal((int(heldout_N.sum()), D))  # noise, not topics
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    after = score_labels(label_LD, [0, 1, 2], moved, codes, heldout_N)
    assert [s.threshold for s in after] == [s.threshold for s in before]
    assert all(a.f1 < b.f1 for a, b in zip(after, before, strict=True))
    # The label-train papers' vectors do move it.
    train = x_ND.copy()
    train[~heldout_N] = x_ND[~heldout_N][::-1]
    assert score_labels(label_LD[:1], [0], train, codes, heldout_N)[0].threshold != (
        before[0].threshold
    )


def _brute_threshold(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = y.sum(), (~y).sum()
    w = pos / neg if neg else 0.0
    best, best_t = -1.0, None
    for t in sorted(set(s.tolist()), reverse=True):  # ties go to the higher t
        pred = s >= t
        tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
        f1 = 2 * tp / (2 * tp + w * fp + fn) if tp else 0.0
        if f1 > best + 1e-12:
            best, best_t = f1, t
    return best_t


@pytest.mark.parametrize("seed", range(4))
def test_fit_thresholds_matches_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    T, L = 60, 7
    # Rounded scores: ties, which a cut may not split.
    S = np.round(rng.standard_normal((T, L)), 1).astype(np.float32)
    Y = rng.random((T, L)) < np.linspace(0.1, 0.6, L)
    Y[:, 0] |= S[:, 0] > 0.5  # one column the score separates well
    got = fit_thresholds(S, Y)
    for j in range(L):
        assert got[j] == _brute_threshold(S[:, j], Y[:, j]), j


def test_latents_with_too_few_held_out_papers_are_not_scored():
    x_ND, codes, heldout_N = _corpus()
    values = codes.values_NW.copy()
    values[(codes.indices_NW[:, 0] == 2) & heldout_N] = 0  # latent 2: none held out
    sparse = SparseCodes(values, codes.indices_NW, 3)
    label_LD = embed_texts(WordEmbedder(), [label_phrase(t) for t in TOPICS])
    got = score_labels(label_LD, [0, 1, 2], x_ND, sparse, heldout_N)
    assert got[2] == EmbedScore() and got[0].f1 is not None
    s = summarize(got)
    assert s["label_embed_scored"] == 2
    assert s["label_embed_f1_mean"] == pytest.approx((got[0].f1 + got[1].f1) / 2)
    with pytest.raises(ValueError, match="label_LD"):
        score_labels(label_LD[:2], [0, 1, 2], x_ND, codes, heldout_N)


def _labels(n: int) -> list[FeatureLabel]:
    return [
        FeatureLabel(latent=j, terms=list(TOPICS[j]), z=[1.0, 1.0], f1=0.3, pearson=0.2,
                     n_heldout=60)
        for j in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "source", "reason"),
    [
        ("openai:text-embedding-3-small", "import", "API embedder"),
        ("no-such-embedder", None, "cannot build"),
    ],
)
def test_a_corpus_whose_embedder_cannot_run_keeps_the_term_scores(tmp_path, spec, source, reason):
    x_ND, codes, heldout_N = _corpus()
    ns = Namespace(Store(str(tmp_path)), "vectors")
    ns.check_embedder(spec, D, source=source)
    scores = score_cell(ns, _labels(3), x_ND, codes, heldout_N)
    assert scores.scorer == "term" and reason in scores.skipped
    assert scores.f1_N.tolist() == [0.3] * 3 and scores.embed == [EmbedScore()] * 3
    summary = scores.summary()
    assert summary["label_embed_skipped"] == 1 and summary["label_embed_scored"] == 0
    assert summary["label_embed_f1_mean"] is None and reason in summary["label_embed_skip_reason"]


def test_the_bundled_minilm_scores_a_label_by_what_its_papers_mean(tmp_path):
    from tasks.embed.embedders import make_query_embedder

    embedder = make_query_embedder("minilm")
    topics = {
        0: ("protein folding, molecular dynamics", "protein structure folding simulation"),
        1: ("galaxy clusters, dark matter", "galaxy cluster dark matter halo lensing"),
    }
    texts, topic_N = [], []
    for t, (_, words) in topics.items():
        for i, extra in itertools.product(range(4), ["study", "survey", "model"]):
            texts.append(f"{words} {extra} number {i}")
            topic_N.append(t)
    x_ND = embedder.embed(texts)
    topic_N = np.array(topic_N)
    codes = SparseCodes(np.ones((len(texts), 1), np.float32), topic_N[:, None].astype(np.int32), 2)
    heldout_N = np.arange(len(texts)) % 3 == 0  # 4 of each topic's 12
    ns = Namespace(Store(str(tmp_path)), embedder.name)
    ns.check_embedder("minilm", embedder.dim)
    labels = [
        FeatureLabel(latent=t, terms=phrase.split(", "), z=[1.0, 1.0], f1=0.5, pearson=0.5,
                     n_heldout=4)
        for t, (phrase, _) in topics.items()
    ]  # fmt: skip
    scores = score_cell(ns, labels, x_ND, codes, heldout_N)
    assert scores.scorer == "embed" and scores.skipped is None
    assert [s.f1 for s in scores.embed] == [1.0, 1.0]
    assert scores.f1_N.tolist() == [1.0, 1.0]
    assert scores.summary()["label_embed_skipped"] == 0
