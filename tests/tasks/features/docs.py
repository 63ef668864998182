"""Synthetic ``features.json`` documents (:mod:`tasks.features.schema`) for tests.

:func:`demo_document` builds a small, deterministic document with every case a reader of
the document meets: dead features, live features whose label has no held-out scores,
families two levels deep (with a parent and children outside the family, as the spanning
forest gives them), and a paper title with markup in it (paper 0, feature 0's top paper).
Live features are over-represented in up to three of :data:`CATEGORIES` (drawn from a
generator of their own, so the rest of the document is what it was before they were).
"""

from __future__ import annotations

import random
from typing import Any

from tasks.features.schema import COOCCURS, MIDDLE_PAPERS, NEIGHBOURS, TOP_PAPERS, VERSION

#: Paper 0's title: what a title that tries to break out of the page's data looks like.
HOSTILE_TITLE = "</script><b>x</b> & <!-- a title with markup"

TERMS = [
    "diffusion",
    "denoising",
    "score",
    "graph",
    "neural",
    "message",
    "passing",
    "transformer",
    "attention",
    "reinforcement",
    "policy",
    "reward",
    "bandit",
    "federated",
    "privacy",
    "differential",
    "kernel",
    "gaussian",
    "process",
    "bayesian",
    "variational",
    "inference",
    "contrastive",
    "representation",
    "causal",
    "counterfactual",
    "optimization",
    "convex",
    "stochastic",
    "gradient",
    "pruning",
    "quantization",
    "distillation",
    "robustness",
    "adversarial",
    "fairness",
    "language",
    "retrieval",
    "vision",
    "segmentation",
    "tabular",
    "forecasting",
    "anomaly",
    "clustering",
    "spectral",
    "manifold",
]


CATEGORIES = ["cs.CV", "cs.CL", "cs.AI", "stat.ML", "cs.RO", "math.OC"]


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _others(rng: random.Random, n: int, j: int, m: int) -> list[int]:
    """``m`` distinct latents other than ``j`` (fewer where there are fewer)."""
    return [i for i in rng.sample(range(n), min(n, m + 1)) if i != j][:m]


def _categories(rng: random.Random) -> list[list]:
    """Up to three (category, lift, count), the highest lift first."""
    picked = rng.sample(CATEGORIES, rng.randint(0, 3))
    lifts = sorted((_sig(rng.uniform(1.1, 9.0)) for _ in picked), reverse=True)
    return [[c, lift, rng.randint(5, 60)] for c, lift in zip(picked, lifts, strict=True)]


def demo_document(n_latents: int = 60, n_papers: int = 200, seed: int = 0) -> dict[str, Any]:
    """A ``features.json`` document over ``n_latents`` features and ``n_papers`` papers."""
    rng = random.Random(seed)
    cat_rng = random.Random(seed + 1_000)
    papers = [{"id": f"24{i // 99_999 + 1:02d}.{i % 99_999 + 1:05d}"} for i in range(n_papers)]
    for i, paper in enumerate(papers):
        words = rng.sample(TERMS, 4)
        paper["title"] = f"{words[0].title()} {words[1]} for {words[2]} {words[3]} ({i})"
    papers[0]["title"] = HOSTILE_TITLE

    # Feature 0 is live and scored; every 13th from 7 on is dead; every 11th from 5 on is
    # live with no held-out scores (too few papers).
    dead = {i for i in range(7, n_latents, 13)}
    unscored = {i for i in range(5, n_latents, 11)} - dead
    features = []
    for j in range(n_latents):
        if j in dead:
            density, mean_act, top, middle, label = 0.0, 0.0, [], [], []
        else:
            density = 10 ** rng.uniform(-2.5, -0.7)
            count = max(1, round(density * n_papers))
            rows = rng.sample(range(n_papers), min(count, TOP_PAPERS + MIDDLE_PAPERS))
            if j == 0:  # the hostile title first
                rows = [0, *(r for r in rows if r != 0)][: len(rows)]
            acts = sorted((rng.uniform(0.05, 1.5) for _ in rows), reverse=True)
            top = [[r, _sig(a)] for r, a in zip(rows[:TOP_PAPERS], acts, strict=False)]
            rest = zip(rows[TOP_PAPERS:], acts[TOP_PAPERS:], strict=True)
            middle = [[r, _sig(a / 3)] for r, a in rest]
            mean_act = _sig(sum(acts) / len(acts) / 2)
            label = rng.sample(TERMS, rng.randint(2, 5))
        near = [(i, rng.uniform(0.1, 0.9)) for i in _others(rng, n_latents, j, NEIGHBOURS)]
        neighbours = sorted(near, key=lambda p: -p[1])
        fired = [(i, rng.uniform(0.01, 0.8)) for i in _others(rng, n_latents, j, COOCCURS)]
        cooccurs = [] if j in dead else sorted(fired, key=lambda p: -p[1])
        scored = j not in dead and j not in unscored
        features.append(
            {
                "id": j,
                "density": _sig(density),
                "mean_act": mean_act,
                "label": label,
                "f1": _sig(rng.uniform(0.2, 0.95)) if scored else None,
                "pearson": _sig(rng.uniform(0.1, 0.8)) if scored else None,
                "top": top,
                "middle": middle,
                "neighbours": [[i, _sig(c)] for i, c in neighbours],
                "cooccurs": [[i, _sig(s)] for i, s in cooccurs],
                "family": None,
                "parent": None,
                "children": [],
                "categories": [] if j in dead else _categories(cat_rng),
            }
        )

    # Families: a head, 2-3 children, and (every other family) grandchildren under the
    # first child. The pool holds live features only, in a shuffled order.
    pool = [j for j in range(n_latents) if j not in dead]
    rng.shuffle(pool)
    families = []
    while len(pool) >= 6 and len(families) < max(1, n_latents // 12):
        fid = len(families)
        head = pool.pop()
        kids = [pool.pop() for _ in range(rng.randint(2, 3))]
        grandkids = [pool.pop() for _ in range(2)] if fid % 2 == 0 else []
        tree = {head: kids, kids[0]: grandkids}
        for parent, children in tree.items():
            features[parent]["children"] = list(children)
            for c in children:
                features[c]["parent"] = parent
        members = [head, *kids, *grandkids]
        for m in members:
            features[m]["family"] = fid
        families.append(
            {"id": fid, "parent": head, "members": members, "depth": 2 if grandkids else 1}
        )
    if pool and families:  # the forest reaches past the family: a child outside it
        outside = pool.pop()
        last = families[-1]["members"][-1]
        features[last]["children"].append(outside)
        features[outside]["parent"] = last

    live = [f for f in features if f["density"] > 0]
    f1 = [f["f1"] for f in features if f["f1"] is not None]
    pearson = [f["pearson"] for f in features if f["pearson"] is not None]
    sizes = [len(f["members"]) for f in families]
    return {
        "version": VERSION,
        "cell": f"demo_{n_latents}",
        "domain": "cs.LG",
        "sweep_id": f"demo-{seed}",
        "k": 8,
        "n_latents": n_latents,
        "n_papers": n_papers,
        "model": f"sae-cs.LG-k8-n{n_latents}/1",
        "papers": papers,
        "features": features,
        "families": families,
        "probes": [
            {
                "category": c,
                "papers": 50 + 10 * i,
                "heldout": 10 + 2 * i,
                "single": {"latent": i, "f1": _sig(0.5 - 0.05 * i)},
                "latents": list(range(i, i + 16)),
                "sparse_f1": {"1": _sig(0.5 - 0.05 * i), "4": 0.6, "16": 0.7},
                "dense_f1": {"1": 0.3, "4": 0.5, "16": 0.65},
                "full_f1": 0.8,
            }
            for i, c in enumerate(CATEGORIES[:3])
        ],
        "summary": {
            "live": len(live),
            "dead": n_latents - len(live),
            "label_f1_mean": _sig(sum(f1) / len(f1)) if f1 else None,
            "label_f1_ge_0_8": _sig(sum(x >= 0.8 for x in f1) / len(f1)) if f1 else None,
            "label_pearson_mean": _sig(sum(pearson) / len(pearson)) if pearson else None,
            "families": len(families),
            "family_size_mean": _sig(sum(sizes) / len(sizes)) if sizes else 0.0,
            "probe_categories": 3,
            "probe_f1_k1_mean": 0.45,
            "probe_f1_k16_mean": 0.7,
            "dense_probe_f1_mean": 0.8,
        },
    }
