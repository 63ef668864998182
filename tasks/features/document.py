"""``features.json`` (:mod:`tasks.features.schema`) from the pieces the analysis computed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.features.cards import LatentStats
from tasks.features.schema import VERSION


def sig(x: float, digits: int = 4) -> float | None:
    """``x`` to ``digits`` significant digits; None for NaN (JSON has no NaN)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def build_document(
    meta: dict[str, Any],
    ids: Sequence[str],
    titles: Sequence[str],
    stats: LatentStats,
    labels: Sequence,
    neighbours: tuple[np.ndarray, np.ndarray],
    cooccurs: Sequence[Sequence[tuple[int, float]]],
    families,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """``labels``: one FeatureLabel per latent; ``families``: a Families of
    :mod:`tasks.features.families`; rows of ``stats`` index ``ids``/``titles``."""
    paper_index: dict[int, int] = {}

    def ref(pairs: Sequence[tuple[int, float]]) -> list[list]:
        out = []
        for row, act in pairs:
            if row not in paper_index:
                paper_index[row] = len(paper_index)
            out.append([paper_index[row], sig(act)])
        return out

    nb_ids, nb_cos = neighbours
    features = []
    for j in range(len(stats.counts_N)):
        lab = labels[j]
        fam = int(families.family[j])
        par = int(families.parent[j])
        features.append(
            {
                "id": j,
                "density": sig(float(stats.density[j])),
                "mean_act": sig(float(stats.mean_act[j])),
                "label": list(lab.terms),
                "f1": sig(lab.f1) if lab.f1 is not None else None,
                "pearson": sig(lab.pearson) if lab.pearson is not None else None,
                "top": ref(stats.top[j]),
                "middle": ref(stats.middle[j]),
                "neighbours": [
                    [int(i), sig(float(c))] for i, c in zip(nb_ids[j], nb_cos[j], strict=True)
                ],
                "cooccurs": [[int(i), sig(float(s))] for i, s in cooccurs[j]],
                "family": fam if fam >= 0 else None,
                "parent": par if par >= 0 else None,
                "children": [int(c) for c in families.children[j]],
            }
        )
    papers = [None] * len(paper_index)
    for row, i in paper_index.items():
        papers[i] = {"id": ids[row], "title": titles[row]}
    return {
        "version": VERSION,
        **meta,
        "n_papers": len(ids),
        "papers": papers,
        "features": features,
        "families": [
            {
                "id": f.id,
                "parent": int(f.parent),
                "members": [int(m) for m in f.members],
                "depth": int(f.depth),
            }
            for f in families.families
        ],
        "summary": {k: sig(v) if isinstance(v, float) else v for k, v in summary.items()},
    }
