"""A hand-built SAE whose features are the axes of the space (encoder = decoder = the
identity's rows), over random papers: a query's code is its k largest coordinates, so
what an edit does to the search vector can be written down without the engine."""

from __future__ import annotations

import numpy as np
import torch

from sae.config import SAEConfig
from sae.model import TopKSAE
from tasks.search.engine import SearchEngine

D, K, N_PAPERS = 12, 3, 400


def axis_sae(d: int = D, k: int = K) -> TopKSAE:
    model = TopKSAE(SAEConfig(d_in=d, n_latents=d, k=k))
    with torch.no_grad():
        model.W_dec.copy_(torch.eye(d))
        model.W_enc.copy_(torch.eye(d))
        model.b_lat.zero_()
        model.b_pre.zero_()
    return model.eval()


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class Embedder:
    """Texts to fixed vectors, counting calls."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors, self.calls = vectors, 0

    def __call__(self, texts):
        self.calls += 1
        return np.stack([self.vectors[t] for t in texts])


def make_corpus():
    rng = np.random.default_rng(0)
    x = unit(np.abs(rng.normal(size=(N_PAPERS, D))) + 0.05)
    ids = [f"2501.{i:05d}" for i in range(N_PAPERS)]
    return ids, [f"paper {i}" for i in range(N_PAPERS)], x


def document(n: int, mean_act: np.ndarray) -> dict:
    feats = [{"id": i, "label": [f"term{i}", f"other{i}"], "mean_act": float(mean_act[i])}
             for i in range(n)]  # fmt: skip
    families = [{"id": 0, "parent": 0, "members": [0, 4, 5], "depth": 1},
                {"id": 7, "parent": 7, "members": [7, 8], "depth": 1}]  # fmt: skip
    return {"features": feats, "families": families}


QUERY = unit(np.array([5.0, 4.0, 3.0, 0.5] + [0.2] * (D - 4)))


def engine_for(corpus, doc=True, vectors=None):
    ids, titles, x = corpus
    mean_act = np.geomspace(0.02, 0.6, D)[::-1]  # wide: units decide orders
    emb = Embedder(vectors or {"q": QUERY})
    eng = SearchEngine(
        axis_sae(), ids, titles, torch.from_numpy(x), emb,
        document(D, mean_act) if doc else None, "axes_3_12", "cs.LG", "s1",
    )  # fmt: skip
    return eng, emb, mean_act
