"""Steerable semantic search over one cell's papers.

A query is embedded, encoded by the SAE, and the user sets the strength of any feature
(raise one the query lacks, lower or remove one it has). The search vector is the
query's own embedding moved along the edited features' decoder rows,

    q' = x + sum_i m_i W_dec[i],

so an unedited query searches with exactly its embedding (the dense results). Strengths
are in units of the query's strongest activation (:data:`tasks.search.limits.STRENGTH_UNIT`):
the query's strongest feature is 1. Raising feature i from the query's own strength s_i
to w moves by m_i = (w - s_i) times that unit, as decoding the edited code would;
lowering it to w reflects, by m_i = -2 c_i (1 - w / s_i), c_i being the larger of
x . W_dec[i] and the activation: at 0 the query's component along W_dec[i] is turned
round, so the search points away from the feature as far as the query pointed at it.
On a 3,000-paper cs.LG sweep (``python -m tasks.search.steer_bench``) removing a query's
strongest feature this way took the share of its top 10 where that feature fires from
35% to 11%; subtracting only its activation, to 29%.

The search vector goes to the corpus's approximate index when it has one (a large
corpus: :mod:`tasks.search.ann`, whose hits are rescored exactly), else to one matmul
over the unit-norm embeddings [N, d].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from tasks.search.ann import AnnIndex, exact_search
from tasks.search.limits import (
    MAX_QUERY_CHARS,
    MAX_STRENGTH,
    MAX_TOP,
    STRENGTH_UNIT,
    SearchInputError,
)

#: Families offered per query, and members offered per family.
FAMILIES, FAMILY_MEMBERS = 6, 8
#: Query embeddings kept per engine.
EMBED_CACHE = 256
#: Features shown per result as having drawn it to the query.
DRIVERS = 3


@dataclass(frozen=True)
class Feature:
    id: int
    label: list[str]
    strength: float  # in units of the query's strongest activation (limits.STRENGTH_UNIT)
    edited: bool = False


@dataclass(frozen=True)
class Hit:
    row: int
    id: str
    title: str
    score: float  # cosine of the paper with the (edited) search vector
    drivers: list[int]  # features in both the query's code and the paper's, strongest first


@dataclass
class SearchResult:
    query: str
    cell: str
    features: list[Feature]  # the query's code after the edits, strongest first
    hits: list[Hit]
    edited: bool
    families: list[dict] = field(default_factory=list)

    def as_dict(self, engine: SearchEngine) -> dict:
        """What ``sae search --json`` prints and the page's API answers (plus its timings)."""
        return {
            "query": self.query,
            "domain": engine.domain,
            "sweep": engine.sweep_id,
            "cell": self.cell,
            "has_labels": engine.document is not None,
            "edited": self.edited,
            "features": [f.__dict__ for f in self.features],
            "hits": [
                {
                    **h.__dict__,
                    "driver_labels": [engine.label(d) for d in h.drivers],
                }
                for h in self.hits
            ],
            "families": self.families,
        }


class SearchEngine:
    """One cell's model over a corpus of embedded papers.

    ``corpus_ND``: unit-norm float32 embeddings, row i is paper ``ids[i]`` titled
    ``titles[i]``; ``embed``: texts -> [len, d] unit-norm vectors (the corpus's embedder);
    ``document``: the cell's ``features.json`` (labels, typical activations, families),
    or None before ``sae features`` has run (ids alone, strengths measured on a sample);
    ``index``: an :class:`AnnIndex` of ``corpus_ND`` to search instead of scanning it.
    """

    def __init__(
        self,
        model,
        ids: list[str],
        titles: list[str],
        corpus_ND: torch.Tensor,
        embed: Callable[[list[str]], np.ndarray],
        document: dict | None = None,
        cell: str = "",
        domain: str = "",
        sweep_id: str = "",
        index: AnnIndex | None = None,
    ):
        if corpus_ND.shape[0] != len(ids) or len(ids) != len(titles):
            raise ValueError(f"{corpus_ND.shape[0]} vectors, {len(ids)} ids, {len(titles)} titles")
        if index is not None and index.x_ND.shape != corpus_ND.shape:
            raise ValueError(f"an index of {tuple(index.x_ND.shape)} for {tuple(corpus_ND.shape)}")
        if corpus_ND.shape[0] == 0:
            raise SearchInputError(f"{cell}: no papers to search", 404)
        self.model = model.eval()
        self.ids, self.titles, self.corpus_ND = ids, titles, corpus_ND.float().contiguous()
        self._embed, self.document, self.index = embed, document, index
        self._embedded: dict[str, torch.Tensor] = {}
        self.build_seconds: dict[str, float] = {}  # set by whoever built it, by part
        self.cell, self.domain, self.sweep_id = cell, domain, sweep_id
        n = model.n_latents
        self.labels: list[list[str]] = [[] for _ in range(n)]
        if document is not None:
            feats = document["features"]
            self.labels = [list(f.get("label") or []) for f in feats]
            unit = np.array([f.get("mean_act") or 0.0 for f in feats], dtype=np.float32)
        else:
            unit = self._sampled_unit()
        # A feature never seen firing gets the median unit, so a slider still means something.
        seen = unit > 0
        fill = float(np.median(unit[seen])) if seen.any() else 1.0
        self.unit_N = torch.from_numpy(np.where(seen, unit, fill).astype(np.float32))
        self._families = (document or {}).get("families", [])
        self._families_with: dict[int, list[int]] = {}
        for pos, fam in enumerate(self._families):
            for m in fam["members"]:
                self._families_with.setdefault(m, []).append(pos)

    @property
    def n_latents(self) -> int:
        return self.model.n_latents

    def label(self, feature: int) -> list[str]:
        return self.labels[feature]

    # ----------------------------------------------------------------- input
    def check_query(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise SearchInputError("the query is empty: type a few words")
        if len(query) > MAX_QUERY_CHARS:
            raise SearchInputError(
                f"the query is {len(query)} characters long; at most {MAX_QUERY_CHARS}"
            )
        return query.strip()

    def check_strengths(self, strengths: Mapping[int, float]) -> dict[int, float]:
        out = {}
        for key, value in strengths.items():
            try:
                fid = int(key)
            except (TypeError, ValueError):
                raise SearchInputError(f"feature id {key!r} is not an integer") from None
            if not 0 <= fid < self.n_latents:
                raise SearchInputError(
                    f"feature {fid} does not exist in {self.cell}: its features are "
                    f"0 to {self.n_latents - 1}"
                )
            try:
                w = float(value)
            except (TypeError, ValueError):
                raise SearchInputError(
                    f"feature {fid}: strength {value!r} is not a number"
                ) from None
            if not math.isfinite(w) or not 0.0 <= w <= MAX_STRENGTH:
                raise SearchInputError(
                    f"feature {fid}: strength {value!r} is outside 0 to {MAX_STRENGTH:g} "
                    f"({STRENGTH_UNIT})"
                )
            out[fid] = w
        return out

    # ---------------------------------------------------------------- search
    def embed(self, query: str) -> torch.Tensor:
        """[d] float32, the query's embedding (kept: a page re-searches the same query
        as each slider moves, and embedding is most of a search's time)."""
        if query not in self._embedded:
            if len(self._embedded) >= EMBED_CACHE:
                self._embedded.pop(next(iter(self._embedded)))
            x = np.asarray(self._embed([query]), dtype=np.float32)[0]
            self._embedded[query] = torch.from_numpy(x.copy())
        return self._embedded[query]

    @torch.no_grad()
    def code(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense activations [B, n] of the SAE's code of ``x_BD``."""
        values, indices = self.model.encode(x_BD.float())
        return torch.zeros(x_BD.shape[0], self.n_latents).scatter_(1, indices, values)

    @torch.no_grad()
    def search(
        self,
        query: str,
        strengths: Mapping[int, float] | None = None,
        top: int = 10,
        x_D: torch.Tensor | None = None,
    ) -> SearchResult:
        """The ``top`` papers for ``query`` with the features in ``strengths`` set to
        those strengths (units: :data:`STRENGTH_UNIT`). ``x_D``: the query's
        embedding if already computed (it is the slow part)."""
        query = self.check_query(query)
        edits = self.check_strengths(strengths or {})
        if not isinstance(top, int) or not 1 <= top <= min(MAX_TOP, len(self.ids)):
            raise SearchInputError(f"top must be 1 to {min(MAX_TOP, len(self.ids))}, got {top!r}")
        x = self.embed(query) if x_D is None else x_D.float()
        z = self.code(x[None])[0]
        q, z_edit, unit = self.steer(x, z, edits)
        if self.index is not None:
            scores_BT, best_BT = self.index.search(q, top)
        else:
            scores_BT, best_BT = exact_search(self.corpus_ND, q, top)
        scores, best = scores_BT[0], best_BT[0]
        hit_codes = self.code(self.corpus_ND[best])
        strength = z_edit / unit
        # Drivers rank shared features by how typical each is of both, whatever the units.
        typical = z_edit / self.unit_N
        hits = [
            Hit(
                row=int(r),
                id=self.ids[int(r)],
                title=self.titles[int(r)],
                score=round(float(scores[j]), 4),
                drivers=_drivers(typical, hit_codes[j] / self.unit_N),
            )
            for j, r in enumerate(best)
        ]
        active = (z_edit > 0).nonzero().squeeze(1).tolist()
        order = sorted(set(active) | set(edits), key=lambda i: -float(strength[i]))
        features = [
            Feature(i, self.labels[i], round(float(strength[i]), 3), i in edits) for i in order
        ]
        families = self.families_of(strength, x)
        return SearchResult(query, self.cell, features, hits, bool(edits), families)

    def steer(
        self, x_D: torch.Tensor, z_N: torch.Tensor, edits: Mapping[int, float]
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(the unit search vector [d], the edited code [n], the activation that is
        strength 1) for the query ``x_D`` coded ``z_N``, with ``edits`` {feature: strength}
        (the module's docstring has the maths)."""
        # A query nothing fires for (none seen yet) counts in the median typical activation.
        unit = float(z_N.max()) if float(z_N.max()) > 0 else float(self.unit_N.median())
        W_dec = self.model.W_dec.detach().float()
        z_edit, move_N = z_N.clone(), torch.zeros_like(z_N)
        for fid, w in edits.items():
            z_edit[fid] = w * unit
            own = float(z_N[fid])
            if w * unit >= own:
                move_N[fid] = w * unit - own
            else:
                along = max(float(x_D @ W_dec[fid]), own)
                move_N[fid] = -2 * along * (1 - w * unit / own)
        q = x_D + move_N @ W_dec
        return q / q.norm().clamp_min(1e-12), z_edit, unit

    def families_of(self, strength_N: torch.Tensor, x_D: torch.Tensor) -> list[dict]:
        """The families holding the query's features, those with its strongest first
        (at most :data:`FAMILIES`), each with the members it lacks that are nearest to
        firing for it (highest pre-activation; at most :data:`FAMILY_MEMBERS`): the
        features a user would add to say more of what the query is about."""
        ranked: dict[int, float] = {}
        for m in (strength_N > 0).nonzero().squeeze(1).tolist():
            for fam in self._families_with.get(m, ()):
                ranked[fam] = max(ranked.get(fam, 0.0), float(strength_N[m]))
        if not ranked:  # no family to offer (or no features.json): no second encoder pass
            return []
        pre_N = self.model.pre_activations((x_D - self.model.b_pre.detach())[None])[0]
        out = []
        for fid in sorted(ranked, key=lambda f: -ranked[f])[:FAMILIES]:
            fam = self._families[fid]
            absent = [m for m in fam["members"] if strength_N[m] <= 0]
            absent.sort(key=lambda m: -float(pre_N[m]))
            out.append(
                {
                    "id": fam["id"],
                    "parent": fam["parent"],
                    "label": self.labels[fam["parent"]],
                    "size": len(fam["members"]),
                    "members": [
                        {"id": m, "label": self.labels[m]} for m in absent[:FAMILY_MEMBERS]
                    ],
                }
            )
        return out

    def _sampled_unit(self, sample: int = 4096) -> np.ndarray:
        """Each feature's mean activation when it fires, over up to ``sample`` papers
        spread through the corpus (0 where it never fires there)."""
        rows = torch.linspace(0, self.corpus_ND.shape[0] - 1, min(sample, len(self.ids)))
        z = self.code(self.corpus_ND[rows.long()])
        fired = (z > 0).sum(0)
        return (z.sum(0) / fired.clamp_min(1)).numpy()


def _drivers(query_N: torch.Tensor, paper_N: torch.Tensor) -> list[int]:
    """Features active in both, by the product of their strengths."""
    both = query_N * paper_N
    n = int((both > 0).sum())
    return torch.topk(both, min(DRIVERS, n)).indices.tolist() if n else []
