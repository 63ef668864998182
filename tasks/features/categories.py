"""The snapshot's papers by arXiv category, and the categories each feature fires on more
often than the snapshot does.

A paper's categories are its primary and its cross-lists, as the corpus keeps them. A
feature's over-representation in category c is its lift, P(c | fires) / P(c), over every
paper of the snapshot, with the count of papers in c it fires on; a card lists the
``top`` categories by lift among those with at least ``min_count`` such papers and a lift
above 1 (a category every paper holds, the domain's own, has lift 1 and never shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from infra.store import Store
from sae.codes import SparseCodes
from tasks.corpus.storage import papers_in_order

#: Categories on a card, and the fewest papers of a category a feature must fire on for it
#: to count: a lift from 2 papers is chance.
TOP_CATEGORIES = 3
MIN_COUNT = 5


@dataclass(frozen=True)
class Categories:
    """``member_NC`` [N, C] (CSR, 1.0 where paper i is in category c); ``names`` [C], the
    most papers first (ties by name)."""

    names: list[str]
    member_NC: sp.csr_matrix

    @property
    def counts(self) -> np.ndarray:
        """[C] int64: the papers in each category."""
        return np.asarray(self.member_NC.sum(axis=0)).ravel().astype(np.int64)


def categories_of(store: Store, ids: list[str]) -> Categories:
    """The categories of ``ids`` from the corpus (none for a paper gone from it since)."""
    return category_matrix(papers_in_order(store, ids, ["categories"])["categories"].to_list())


def category_matrix(lists: Sequence[Sequence[str] | None]) -> Categories:
    """[N, C] membership from each paper's category list (None: no categories)."""
    rows: list[list[int]] = []
    column: dict[str, int] = {}
    for cats in lists:
        cols = {column.setdefault(c, len(column)) for c in cats or ()}
        rows.append(sorted(cols))
    names = list(column)
    indptr = np.cumsum([0, *(len(r) for r in rows)])
    indices = np.fromiter((c for r in rows for c in r), dtype=np.int64, count=int(indptr[-1]))
    member = sp.csr_matrix(
        (np.ones(len(indices), np.float32), indices, indptr), shape=(len(lists), len(names))
    )
    counts = np.asarray(member.sum(axis=0)).ravel()
    order = sorted(range(len(names)), key=lambda c: (-counts[c], names[c]))
    return Categories([names[c] for c in order], member[:, order].tocsr())


def firing_matrix(codes: SparseCodes) -> sp.csr_matrix:
    """[N, n] CSR of the codes' activations (only firing slots stored)."""
    fire = codes.firing()
    rows = np.nonzero(fire)[0]
    return sp.csr_matrix(
        (codes.values_NW[fire].astype(np.float32), (rows, codes.indices_NW[fire])),
        shape=(codes.n_rows, codes.n_latents),
    )


def over_represented(
    codes: SparseCodes, cats: Categories, top: int = TOP_CATEGORIES, min_count: int = MIN_COUNT
) -> list[list[tuple[str, float, int]]]:
    """Per latent, up to ``top`` (category, lift, count) with the highest lift, highest first."""
    fires_Nn = firing_matrix(codes)
    fires_Nn.data[:] = 1.0
    n_papers = codes.n_rows
    fired_n = np.asarray(fires_Nn.sum(axis=0)).ravel()
    both_nC = np.asarray((fires_Nn.T @ cats.member_NC).todense())
    share_C = cats.counts / max(n_papers, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift_nC = both_nC / fired_n[:, None] / share_C[None, :]
    lift_nC[~((both_nC >= min_count) & (lift_nC > 1.0))] = 0.0
    best_nT = np.argsort(-lift_nC, axis=1, kind="stable")[:, :top]
    return [
        [(cats.names[c], float(lift_nC[j, c]), int(both_nC[j, c])) for c in best if lift_nC[j, c]]
        for j, best in enumerate(best_nT)
    ]
