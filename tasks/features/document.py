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


def _scores(term, embed, scorer: str | None) -> dict[str, float | None]:
    """The label's score pairs by scorer, and the chosen one's as ``f1``/``pearson``."""
    out = {
        "term_f1": sig(term.f1) if term.f1 is not None else None,
        "term_pearson": sig(term.pearson) if term.pearson is not None else None,
        "embed_f1": sig(embed.f1) if embed and embed.f1 is not None else None,
        "embed_pearson": sig(embed.pearson) if embed and embed.pearson is not None else None,
    }
    chosen = "embed" if scorer == "embed" else "term"
    return {"f1": out[f"{chosen}_f1"], "pearson": out[f"{chosen}_pearson"], **out}


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
    scores=None,
    clean: np.ndarray | None = None,
) -> dict[str, Any]:
    """``labels``: one FeatureLabel per latent; ``families``: a Families of
    :mod:`tasks.features.families`; rows of ``stats`` index ``ids``/``titles``; ``scores``:
    the labels' :class:`tasks.features.label_scores.LabelScores` (its scorer's F1 and r are
    each card's ``f1``/``pearson``; without it, the term scores'); ``clean``: [n] bool, the
    features that may join families."""
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
                **_scores(lab, scores.embed[j] if scores else None, scores and scores.scorer),
                "clean": bool(clean[j]) if clean is not None else None,
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


def add_categories(
    doc: dict[str, Any], over: Sequence[Sequence[tuple[str, float, int]]], probes: list[dict]
) -> None:
    """Into ``doc``: each feature's over-represented arXiv categories (``over``, one list of
    (category, lift, count) per latent, :func:`tasks.features.categories.over_represented`)
    and the category probes (:meth:`tasks.features.probing.CategoryProbe.as_json`)."""
    for feature, cats in zip(doc["features"], over, strict=True):
        feature["categories"] = [[c, sig(lift, 3), count] for c, lift, count in cats]
    doc["probes"] = [_rounded(p) for p in probes]


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return sig(x)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x
