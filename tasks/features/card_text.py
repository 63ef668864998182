"""One feature's card as terminal text (``sae feature``), from ``features.json``."""

from __future__ import annotations

from tasks.features.locate import FeaturesInputError


def _label(doc: dict, j: int) -> str:
    terms = doc["features"][j]["label"]
    return ", ".join(terms) if terms else "(no label)"


def _refs(doc: dict, pairs: list, what: str) -> list[str]:
    return [f"  #{j:<6} {v:>7.3f}  {_label(doc, j)}" for j, v in pairs] or [f"  (no {what})"]


def _categories(f: dict) -> str:
    """Its over-represented arXiv categories (absent from documents written before them)."""
    cats = f.get("categories") or []
    shown = ", ".join(f"{c} x{lift:.1f} ({count} papers)" for c, lift, count in cats)
    return f"over-represented in: {shown or '(no category)'}"


def _other_score(doc: dict, f: dict) -> str:
    """The scorer beside the label score's (``f1`` is ``summary.label_score``'s; documents
    written before the embedding scorer have term scores only)."""
    other = "term" if doc["summary"].get("label_score") == "embed" else "embed"
    if f.get(f"{other}_f1") is None:
        return ""
    by = "by terms" if other == "term" else "by embedding"
    return f" ({by}: F1 {f[f'{other}_f1']:.2f}, r {f[f'{other}_pearson']:.2f})"


def card_text(doc: dict, j: int) -> str:
    n = len(doc["features"])
    if not 0 <= j < n:
        raise FeaturesInputError(f"feature {j} is out of range: {doc['cell']} has 0..{n - 1}")
    f = doc["features"][j]
    papers = doc["papers"]
    count = round((f["density"] or 0) * doc["n_papers"])
    if f["f1"] is None:
        score = "label not scored (too few held-out papers fire it)"
    else:
        score = f"label F1 {f['f1']:.2f}, Pearson r {f['pearson']:.2f} on held-out papers"
        score += _other_score(doc, f)
    lines = [
        f"feature {j} of {doc['cell']} ({doc['domain']}, sweep {doc['sweep_id']})",
        f"label: {_label(doc, j)}",
        score,
        f"fires on {count} of {doc['n_papers']} papers (density {f['density']}), "
        f"mean activation {f['mean_act']}",
        _categories(f),
        "",
        "top papers:",
    ]
    lines += [
        f"  {act:>7.3f}  {papers[p]['id']:<12} {papers[p]['title'][:90]}" for p, act in f["top"]
    ] or ["  (none: the feature never fires)"]
    if f["middle"]:
        lines += ["from the middle of its range:"]
        lines += [
            f"  {act:>7.3f}  {papers[p]['id']:<12} {papers[p]['title'][:90]}"
            for p, act in f["middle"]
        ]
    lines += ["nearest decoder neighbours (cosine):", *_refs(doc, f["neighbours"], "neighbours")]
    lines += ["fires most with (share of its papers):", *_refs(doc, f["cooccurs"], "co-firing")]
    if f["family"] is not None or f["parent"] is not None or f["children"]:
        lines += ["family:"]
        if f["parent"] is not None:
            lines.append(f"  parent   #{f['parent']}  {_label(doc, f['parent'])}")
        lines += [f"  child    #{c}  {_label(doc, c)}" for c in f["children"]]
        if f["family"] is not None:
            lines.append(f"  in family {f['family']}")
    return "\n".join(lines)
