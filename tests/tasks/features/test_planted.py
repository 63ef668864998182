"""Planted structure, end to end through the library: embeddings built from known
directions, each used by a known set of "papers" with known words; a TopK SAE trained on
them; then the features' top papers, labels and families must find what was planted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae.codes import encode_matrix
from sae.config import RunInfo, SAEConfig, TrainConfig
from sae.trainer import PackTrainer
from tasks.features.cards import latent_stats
from tasks.features.families import build_families, cooccurrence
from tasks.features.labels import TermMatrix, label_features

D, N_FILLER_ATOMS = 48, 40
TOPICS = {"quasar": "redshift", "protein": "folding", "graph": "coloring", "option": "pricing"}
PARENT, CHILDREN = "galaxy", ("spiral", "elliptical", "dwarf")
FILLER = [f"w{i:03d}" for i in range(400)]


@pytest.fixture(scope="module")
def planted():
    return build()


def build(filler: float = 0.5, epochs: int = 30, n_latents: int = 64, k: int = 4):
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((N_FILLER_ATOMS + len(TOPICS) + 1 + len(CHILDREN), D))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    names = [*TOPICS, PARENT, *CHILDREN]
    direction = {name: atoms[N_FILLER_ATOMS + i] for i, name in enumerate(names)}
    members: dict[str, list[int]] = {name: [] for name in names}
    xs, texts = [], []
    n = 0
    for topic in TOPICS:  # 250 papers each
        for _ in range(250):
            members[topic].append(n)
            n += 1
    for child in (*CHILDREN, None):  # 200 per child, 200 with the parent alone
        for _ in range(200):
            members[PARENT].append(n)
            if child:
                members[child].append(n)
            n += 1
    n_total = n + 1500  # and papers of no planted topic
    for i in range(n_total):
        x = atoms[rng.choice(N_FILLER_ATOMS, 2, replace=False)].sum(0) * filler
        words = list(rng.choice(FILLER, 30))
        for name in names:
            if i in members[name]:
                x = x + direction[name] * rng.uniform(0.8, 1.2)
                at = int(rng.integers(len(words)))  # the topic's phrase, somewhere
                words[at:at] = [name, TOPICS[name]] if name in TOPICS else [name]
        x += 0.02 * rng.standard_normal(D)
        xs.append(x / np.linalg.norm(x))
        texts.append(" ".join(words))
    x = torch.tensor(np.array(xs), dtype=torch.float32)
    trainer = PackTrainer(
        [SAEConfig(d_in=D, n_latents=n_latents, k=k)],
        TrainConfig(batch_size=128, lr=3e-3, epochs=epochs, log_every_steps=1000, seed=0),
        run=RunInfo(domain="planted"),
    )
    trainer.fit(x, x[::10])
    model = trainer.model(trainer.names[0])
    return model, x, texts, members, direction


def _latent_of(model, direction) -> tuple[int, float]:
    W = model.W_dec.detach().numpy()
    cos = W @ direction / np.linalg.norm(W, axis=1)
    return int(cos.argmax()), float(cos.max())


def test_planted_topics_come_back_with_their_papers_and_words(planted):
    model, x, texts, members, direction = planted
    codes = encode_matrix(model, x)
    stats = latent_stats(codes)
    heldout = np.arange(len(texts)) % 5 == 0
    labels = label_features(
        TermMatrix.build(texts), codes.values_NW, codes.indices_NW, codes.n_latents, heldout
    )
    for topic, word in TOPICS.items():
        j, cos = _latent_of(model, direction[topic])
        assert cos > 0.75, (topic, cos)  # chance is ~0.15 in 48 dimensions
        top_rows = {r for r, _ in stats.top[j]}
        assert top_rows <= set(members[topic]), topic
        # As one term ("quasar redshift") or two, among the label's first three.
        assert {topic, word} <= set(" ".join(labels[j].terms[:3]).split()), labels[j].terms
        assert labels[j].f1 >= 0.8, (topic, labels[j])


def test_a_planted_hierarchy_comes_back_as_one_family(planted):
    model, x, _, _, direction = planted
    codes = encode_matrix(model, x)
    fams = build_families(
        cooccurrence(codes.values_NW, codes.indices_NW, codes.n_latents),
        eligible=codes.counts() > 0,
    )
    parent, _ = _latent_of(model, direction[PARENT])
    children = [_latent_of(model, direction[c])[0] for c in CHILDREN]
    assert len({parent, *children}) == 4
    (family,) = [f for f in fams.families if f.parent == parent]
    assert set(children) <= set(family.members)
    for topic in TOPICS:  # the unrelated topics stay out of it
        assert _latent_of(model, direction[topic])[0] not in family.members
