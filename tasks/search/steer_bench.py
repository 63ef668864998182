"""Does steering move a search, and does it stay about the query? Measured on the arXiv
categories of a finished sweep's papers.

    python -m tasks.search.steer_bench [--home PATH] [--domain cs.LG] [--model champion]
                                       [--sweep ID] [--held-out FILE] [--queries 40]
                                       [--min-papers 30] [--strengths 0,0.5,1,...]

Queries: the domain's research phrases (:data:`tasks.search.bench.PHRASES`), then the
titles of ``--held-out`` papers (any JSONL(.gz) of ``{"id", "title"}`` records, e.g. the
shared sample past the sweep's ``--limit``) that are not in the sweep's corpus, up to
``--queries`` in all.

Add: for each arXiv category that at least ``--min-papers`` of the corpus's papers carry
(cross-lists; one that most papers carry, the domain's own, is left out), its feature is
the one whose firing best predicts the category (F1 over the corpus). Each query is
searched with that feature set to each of ``--strengths`` (and unedited): the share of
the top 10 in the category, and the mean cosine of the top 10 to the unedited query.

Suppress: each query's strongest feature is set to each strength: the share of the top
10 on which that feature fires, and the same mean cosine.

Reference cosines (unedited): the mean of the query's top 10, its 30th and 100th paper,
and the mean over the corpus -- "about the query" is read against them. The default
add strength (:data:`tasks.search.limits.ADD_STRENGTH`) is marked in both tables.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.search.bench import PHRASES, emit, row
from tasks.search.engine import SearchEngine
from tasks.search.limits import ADD_STRENGTH, MAX_STRENGTH

TOP = 10
#: A category most of the corpus carries is the domain itself, not a direction to steer.
MAX_CATEGORY_SHARE = 0.5
DEFAULT_STRENGTHS = (0.0, 0.5, 1.0, 2.0, 3.0, ADD_STRENGTH, 5.0, 6.0, 8.0, MAX_STRENGTH)


@dataclass(frozen=True)
class Category:
    name: str
    papers_N: torch.Tensor  # bool [N], the corpus's papers that carry it
    feature: int  # the feature whose firing predicts it best
    f1: float


def held_out_titles(path: Path, corpus_ids: set[str], n: int) -> list[str]:
    """Up to ``n`` titles of records in ``path`` whose paper is not in the corpus."""
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt") as f:
        for line in f:
            record = json.loads(line)
            title = " ".join(str(record.get("title") or "").split())
            if title and record.get("id") not in corpus_ids:
                out.append(title)
                if len(out) == n:
                    break
    return out


def fires(engine: SearchEngine, chunk: int = 4096) -> torch.Tensor:
    """bool [N, n]: the features that fire on each paper of the corpus."""
    parts = [
        engine.code(engine.corpus_ND[s : s + chunk]) > 0
        for s in range(0, engine.corpus_ND.shape[0], chunk)
    ]
    return torch.cat(parts)


def categories(names_N: list[list[str]], fires_NF: torch.Tensor, min_papers: int) -> list[Category]:
    """The categories at least ``min_papers`` papers carry (and at most
    :data:`MAX_CATEGORY_SHARE` of them), each with its best feature by F1, commonest first."""
    n = len(names_N)
    counts: dict[str, int] = {}
    for names in names_N:
        for c in set(names):
            counts[c] = counts.get(c, 0) + 1
    fired_F = fires_NF.sum(0).float()
    out = []
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        if count < min_papers or count > MAX_CATEGORY_SHARE * n:
            continue
        in_N = torch.tensor([name in names for names in names_N])
        both_F = fires_NF[in_N].sum(0).float()
        f1_F = 2 * both_F / (fired_F + count)
        best = int(f1_F.argmax())
        out.append(Category(name, in_N, best, float(f1_F[best])))
    return out


def top_rows(engine: SearchEngine, x_D: torch.Tensor, edits: dict[int, float]) -> torch.Tensor:
    hits = engine.search("steer bench", edits, TOP, x_D=x_D).hits
    return torch.tensor([h.row for h in hits])


@dataclass
class Curve:
    """Per strength, the mean over (query, feature) of a share of the top 10, of the
    top 10's cosine to the unedited query, and of the papers new to the top 10."""

    share: dict[float, float]
    cosine: dict[float, float]
    new: dict[float, float]


class _Points:
    """A :class:`Curve`'s samples as they are measured."""

    def __init__(self, strengths: list[float]):
        self.share: dict[float, list[float]] = {w: [] for w in strengths}
        self.cosine: dict[float, list[float]] = {w: [] for w in strengths}
        self.new: dict[float, list[float]] = {w: [] for w in strengths}

    def add(self, w: float, share: float, cosine: float, rows, plain) -> None:
        self.share[w].append(share)
        self.cosine[w].append(cosine)
        self.new[w].append(float(len(set(rows.tolist()) - set(plain.tolist()))))

    def curve(self) -> Curve:
        def mean(d: dict[float, list[float]]) -> dict[float, float]:
            return {w: float(np.mean(v)) for w, v in d.items()}

        return Curve(mean(self.share), mean(self.cosine), mean(self.new))


def add_curve(
    engine: SearchEngine, xs: list[torch.Tensor], cats: list[Category], strengths: list[float]
) -> tuple[float, float, Curve]:
    """(mean share unedited, mean cosine unedited, the curve of each category's feature
    boosted)."""
    base, base_cos, points = [], [], _Points(strengths)
    for x in xs:
        plain = top_rows(engine, x, {})
        for cat in cats:
            base.append(float(cat.papers_N[plain].float().mean()))
            base_cos.append(float((engine.corpus_ND[plain] @ x).mean()))
            for w in strengths:
                rows = top_rows(engine, x, {cat.feature: w})
                share = float(cat.papers_N[rows].float().mean())
                points.add(w, share, float((engine.corpus_ND[rows] @ x).mean()), rows, plain)
    return float(np.mean(base)), float(np.mean(base_cos)), points.curve()


def suppress_curve(
    engine: SearchEngine, xs: list[torch.Tensor], fires_NF: torch.Tensor, strengths: list[float]
) -> tuple[float, Curve]:
    """(mean share unedited, the curve of each query's strongest feature set to each
    strength): the share is of the top 10 on which that feature fires."""
    base, points = [], _Points(strengths)
    for x in xs:
        strongest = int(engine.code(x[None])[0].argmax())  # by activation, whatever the units
        plain = top_rows(engine, x, {})
        base.append(float(fires_NF[plain, strongest].float().mean()))
        for w in strengths:
            rows = top_rows(engine, x, {strongest: w})
            share = float(fires_NF[rows, strongest].float().mean())
            points.add(w, share, float((engine.corpus_ND[rows] @ x).mean()), rows, plain)
    return float(np.mean(base)), points.curve()


def reference_cosines(engine: SearchEngine, xs: list[torch.Tensor]) -> dict[str, float]:
    """Unedited: the mean cosine of the top 10, of the 30th and 100th paper, of all."""
    scores = torch.stack([engine.corpus_ND @ x for x in xs])  # [Q, N]
    ranked = scores.sort(dim=1, descending=True).values
    at = {r: min(r, ranked.shape[1]) - 1 for r in (30, 100)}
    return {
        "top 10": float(ranked[:, :TOP].mean()),
        "30th paper": float(ranked[:, at[30]].mean()),
        "100th paper": float(ranked[:, at[100]].mean()),
        "corpus mean": float(scores.mean()),
    }


def curve_table(title: str, base: float, base_cos: float, curve: Curve) -> list[str]:
    lines = [row(title, "share", "x before", "cos query", "new of 10")]
    lines.append(row("unedited", base, 1.0, base_cos, 0.0))
    for w in curve.share:
        mark = "  <- default add" if w == ADD_STRENGTH else ""
        ratio = curve.share[w] / base if base else float("nan")
        cells = (curve.share[w], ratio, curve.cosine[w], curve.new[w])
        lines.append(row(f"strength {w:g}", *cells) + mark)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--home", type=Path, default=None, help="SAE_HOME (default: $SAE_HOME)")
    p.add_argument("--domain", default="cs.LG")
    p.add_argument("--model", default="champion", help="champion or a cell name")
    p.add_argument("--sweep", default=None, help="sweep id (default: the newest finished)")
    p.add_argument("--held-out", type=Path, default=None, help="JSONL(.gz) of more queries")
    p.add_argument("--queries", type=int, default=40, help="queries in all")
    p.add_argument("--min-papers", type=int, default=30, help="papers a category needs")
    p.add_argument(
        "--strengths",
        default=",".join(f"{w:g}" for w in sorted(set(DEFAULT_STRENGTHS))),
        help="strengths to set, comma-separated",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    a = p.parse_args(argv)
    strengths = [float(w) for w in a.strengths.split(",") if w.strip()]
    if a.queries < 1 or a.min_papers < 1 or not strengths:
        p.error("--queries and --min-papers must be >= 1, --strengths not empty")
    if a.home is not None:
        os.environ["SAE_HOME"] = str(a.home)
    torch.set_num_threads(a.threads)

    from infra.settings import get_settings
    from tasks.corpus.storage import papers_in_order
    from tasks.layout import open_store
    from tasks.search.load import open_engine

    engine = open_engine(a.domain, a.model, a.sweep)
    queries = list(PHRASES.get(engine.domain, []))[: a.queries]
    if a.held_out is not None and len(queries) < a.queries:
        queries += held_out_titles(a.held_out, set(engine.ids), a.queries - len(queries))
    if not queries:
        p.error(f"no queries: {engine.domain} has no phrases here; give --held-out")
    xs = [engine.embed(q) for q in queries]
    torch.set_num_threads(a.threads)  # the embedder may have set its own
    names = papers_in_order(open_store(get_settings()), engine.ids, ["categories"])
    names_N = [list(c or []) for c in names["categories"].to_list()]
    fires_NF = fires(engine)
    cats = categories(names_N, fires_NF, a.min_papers)
    n_phrases = min(a.queries, len(PHRASES.get(engine.domain, [])))
    lines = [
        f"{engine.domain}: {len(engine.ids)} papers, cell {engine.cell} "
        f"(n={engine.n_latents}, k={engine.model.k}), sweep {engine.sweep_id}; "
        f"{len(queries)} queries ({n_phrases} phrases, {len(queries) - n_phrases} held-out "
        f"titles); default add strength {ADD_STRENGTH:g}, max {MAX_STRENGTH:g}",
        "",
        row("category (papers): feature, F1", "papers", "feature", "F1"),
    ]
    for cat in cats:
        label = ", ".join(engine.label(cat.feature)[:3])
        lines.append(row(f"{cat.name} {label}"[:52], int(cat.papers_N.sum()), cat.feature, cat.f1))
    lines += ["", row("unedited query, mean cosine of", "")]
    lines += [row(f"  {k}", v) for k, v in reference_cosines(engine, xs).items()]
    emit(lines)
    if cats:
        base, base_cos, curve = add_curve(engine, xs, cats, strengths)
        title = f"add: each category's feature ({len(cats)})"
        emit(["", *curve_table(title, base, base_cos, curve)])
    s_base, s_curve = suppress_curve(engine, xs, fires_NF, strengths)
    plain_cos = reference_cosines(engine, xs)["top 10"]
    emit(["", *curve_table("suppress: the query's strongest feature", s_base, plain_cos, s_curve)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
