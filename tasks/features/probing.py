"""Sparse probing with arXiv's own labels: how well a few latents tell a paper's category.

SAEBench's sparse probing, with each paper's arXiv categories (primary and cross-lists) as
the labels. Probed: the ``MAX_CATEGORIES`` most frequent categories with at least
``MIN_PAPERS`` of the snapshot's papers and at least as many without it, less the
domain's own names (cs.LG in the domain cs.LG, the bare astro-ph in astro-ph): being in
one of them is how a paper got into the snapshot. An archive's categories are probed in
the archive (astro-ph.GA in astro-ph) and every category in ``all``: there they are the
labels a reader sorts papers by.

Split, by a hash of the id (salted apart from the labels' and the sweep's splits) mod
``HOLDOUT_EVERY``: 0 is held out, and every F1 is of the held-out papers; latents are
chosen on the rest (the training papers); a probe is fit on those at 2 or more, and its
ridge strength (of ``L2_GRID``) and decision threshold are the ones with the best F1 on
those at 1, the validation papers: fit and threshold on the same papers overfit (a
384-d probe separates 60 positives among 1,600 papers perfectly, and then finds none
held out). A category without a paper in each part is skipped. Per category:

- ``single``: the latent whose firing (fires or not) has the best F1 against the category
  on the training papers;
- ``sparse[k]`` for k in ``PROBE_KS``: the k latents with the largest |mean activation in
  the category - mean activation outside it| (SAEBench's choice), then an L2-regularised
  logistic regression on those columns (standardised, L-BFGS);
- ``dense[k]``: the same on the embedding's k coordinates chosen the same way;
- ``full``: the logistic regression on every coordinate of the embedding, the ceiling.

Classes are not balanced. The categories are rare (a cross-list is 1-10% of a domain's
papers) and the question is how well a latent finds a category's papers among the
domain's, which is F1 at the snapshot's own mix; balancing (SAEBench) would score
accuracy on a 50/50 mix that no reader meets. A logistic regression fit on rare positives
seldom crosses 0.5, hence the threshold chosen on the validation papers. The figures are
therefore F1, not SAEBench's balanced accuracy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from sae.codes import SparseCodes
from tasks.corpus.domains import Domain
from tasks.features.categories import Categories, firing_matrix

PROBE_KS = (1, 4, 16)
MIN_PAPERS = 50
MAX_CATEGORIES = 30
#: One paper in five held out, as the labels do, under a salt of its own; one in five
#: validates.
HOLDOUT_EVERY = 5
#: Ridge strengths on the standardised weights (the mean loss's scale), strongest first
#: (each fit starts from the one before); even the weakest keeps the fit finite when one
#: column separates the classes (a latent that is the category).
L2_GRID = (1e-1, 1e-2, 1e-3)
LBFGS_STEPS = 100
#: Papers the probes see at most: a hash-random sample past it, so a cell of all of arXiv
#: probes in the time of one of 60k papers (the 30 most frequent categories keep
#: thousands of papers each in it; the full-embedding fits were minutes at 100k).
MAX_PAPERS = 60_000


def probe_split(ids: list[str]) -> np.ndarray:
    """[N] int: 0 held out, 1 validation, 2+ fit (stable as the corpus grows)."""
    return np.array(
        [int(hashlib.sha256(f"probes:{i}".encode()).hexdigest()[:8], 16) % HOLDOUT_EVERY
         for i in ids],
        dtype=np.int64,
    )  # fmt: skip


def sample_rows(ids: list[str], size: int) -> np.ndarray:
    """[size] int64, ascending: the rows of the ``size`` ids of smallest salted hash (the
    same papers whatever order the ids come in)."""
    keys = np.array(
        [int(hashlib.sha256(f"probe-sample:{i}".encode()).hexdigest()[:15], 16) for i in ids],
        dtype=np.int64,
    )
    return np.sort(np.argpartition(keys, size - 1)[:size])


def probe_holdout(ids: list[str]) -> np.ndarray:
    """[N] bool: the papers the probes are scored on."""
    return probe_split(ids) == 0


def probed(cats: Categories, domain: Domain) -> list[int]:
    """The columns of ``cats`` to probe, the most papers first."""
    counts, n = cats.counts, cats.member_NC.shape[0]
    return [
        c
        for c, name in enumerate(cats.names)
        if MIN_PAPERS <= counts[c] <= n - MIN_PAPERS and name not in domain.members
    ][:MAX_CATEGORIES]


@dataclass(frozen=True)
class CategoryProbe:
    """One category's held-out F1s; ``latents`` and ``coords`` are the ``max(PROBE_KS)``
    chosen on the training papers, best first (each k probes a prefix)."""

    category: str
    papers: int  # the snapshot's papers in the category
    heldout: int  # of them, held out
    single_latent: int
    single_f1: float
    latents: list[int]
    sparse_f1: dict[int, float]
    coords: list[int]
    dense_f1: dict[int, float]
    full_f1: float

    def as_json(self) -> dict:
        return {
            "category": self.category,
            "papers": self.papers,
            "heldout": self.heldout,
            "single": {"latent": self.single_latent, "f1": self.single_f1},
            "latents": self.latents,
            "sparse_f1": {str(k): v for k, v in self.sparse_f1.items()},
            "dense_f1": {str(k): v for k, v in self.dense_f1.items()},
            "full_f1": self.full_f1,
        }


def probe_categories(
    ids: list[str],
    cats: Categories,
    domain: Domain,
    codes: SparseCodes,
    x_ND: np.ndarray,
    device: str = "cpu",
) -> list[CategoryProbe]:
    """The probes of ``probed`` categories; rows of ``cats``, ``codes`` and ``x_ND`` [N, d]
    are the papers ``ids``, in that order. Past :data:`MAX_PAPERS` papers, a sample."""
    if len(ids) > MAX_PAPERS:
        rows = sample_rows(ids, MAX_PAPERS)
        ids = [ids[r] for r in rows]
        cats = Categories(cats.names, cats.member_NC[rows])
        codes = SparseCodes(codes.values_NW[rows], codes.indices_NW[rows], codes.n_latents)
        x_ND = x_ND[rows]
    part_N = np.minimum(probe_split(ids), 2)
    held_N = part_N == 0
    parts = [part_N == p for p in range(3)]
    pos_PC = np.stack([np.asarray(cats.member_NC[m].sum(axis=0)).ravel() for m in parts])
    size_P = np.array([m.sum() for m in parts])[:, None]
    whole = ((pos_PC > 0) & (pos_PC < size_P)).all(axis=0)
    cols = [c for c in probed(cats, domain) if whole[c]]
    if not cols:
        return []
    y_NC = cats.member_NC[:, cols].toarray() > 0
    acts_Nn = firing_matrix(codes).tocsc()
    fires_Nn = acts_Nn.copy()
    fires_Nn.data[:] = 1.0
    top = max(PROBE_KS)
    single_C = _best_single(fires_Nn, y_NC, ~held_N)
    latents_CK = _top_mean_diff(acts_Nn, y_NC, ~held_N, min(top, codes.n_latents))
    coords_CK = _top_mean_diff(x_ND, y_NC, ~held_N, min(top, x_ND.shape[1]))
    x = torch.as_tensor(x_ND, dtype=torch.float32, device=device)
    out = []
    for i, c in enumerate(cols):
        y_N = y_NC[:, i]
        fires_N = np.zeros(len(ids), dtype=bool)
        fires_N[fires_Nn[:, [single_C[i]]].nonzero()[0]] = True
        columns_NK = torch.as_tensor(acts_Nn[:, latents_CK[i]].toarray(), device=device)

        def probe(X, y_N=y_N):
            return _probe_f1(X, y_N, part_N)

        out.append(
            CategoryProbe(
                category=cats.names[c],
                papers=int(y_N.sum()),
                heldout=int(y_N[held_N].sum()),
                single_latent=int(single_C[i]),
                single_f1=f1_score(fires_N[held_N], y_N[held_N]),
                latents=[int(j) for j in latents_CK[i]],
                sparse_f1={k: probe(columns_NK[:, :k]) for k in PROBE_KS},
                coords=[int(j) for j in coords_CK[i]],
                dense_f1={k: probe(x[:, coords_CK[i][:k]]) for k in PROBE_KS},
                full_f1=probe(x),
            )
        )
    return out


def summarize(probes: list[CategoryProbe]) -> dict:
    """Means over the probed categories (None when there are none)."""

    def mean(values) -> float | None:
        return float(np.mean(list(values))) if probes else None

    out: dict = {
        "probe_categories": len(probes),
        "probe_single_f1_mean": mean(p.single_f1 for p in probes),
    }
    for k in PROBE_KS:
        out[f"probe_f1_k{k}_mean"] = mean(p.sparse_f1[k] for p in probes)
    for k in PROBE_KS:
        out[f"dense_probe_f1_k{k}_mean"] = mean(p.dense_f1[k] for p in probes)
    out["dense_probe_f1_mean"] = mean(p.full_f1 for p in probes)
    return out


def f1_score(predicted_M: np.ndarray, y_M: np.ndarray) -> float:
    """F1 of bool predictions against bool truth; 0.0 when neither holds a positive."""
    both = float((predicted_M & y_M).sum())
    total = float(predicted_M.sum() + y_M.sum())
    return 2 * both / total if total else 0.0


def best_threshold(scores_M: np.ndarray, y_M: np.ndarray) -> float:
    """The threshold t whose ``scores >= t`` has the best F1 against ``y_M`` (ties among
    equal scores are cut together, as ``>=`` cuts them)."""
    order = np.argsort(-scores_M, kind="stable")
    s, t = scores_M[order], y_M[order]
    f1 = 2 * np.cumsum(t) / (np.arange(1, len(s) + 1) + t.sum())
    cut = np.r_[s[:-1] > s[1:], True]
    return float(s[int(np.argmax(np.where(cut, f1, -1.0)))])


def _best_single(fires_Nn: sp.csc_matrix, y_NC: np.ndarray, train_N: np.ndarray) -> np.ndarray:
    """[C] the latent whose firing has the best training F1 for each category."""
    y_tr = y_NC & train_N[:, None]
    both_nC = np.asarray(fires_Nn.T @ y_tr.astype(np.float32))
    fired_n = np.asarray(fires_Nn.T @ train_N.astype(np.float32)).ravel()
    f1_nC = 2 * both_nC / (fired_n[:, None] + y_tr.sum(axis=0)[None, :])
    return np.argmax(f1_nC, axis=0)


def _top_mean_diff(X_NM, y_NC: np.ndarray, train_N: np.ndarray, k: int) -> np.ndarray:
    """[C, k] the columns of ``X_NM`` (dense or sparse) with the largest |mean in the
    category - mean outside it| over the training papers, largest first."""
    pos_NC = (y_NC & train_N[:, None]).astype(np.float32)
    neg_NC = (~y_NC & train_N[:, None]).astype(np.float32)
    pos_MC = np.asarray(X_NM.T @ pos_NC) / pos_NC.sum(axis=0)
    neg_MC = np.asarray(X_NM.T @ neg_NC) / neg_NC.sum(axis=0)
    diff_CM = np.abs(pos_MC - neg_MC).T
    return np.argsort(-diff_CM, axis=1, kind="stable")[:, :k]


def _probe_f1(X_NM: torch.Tensor, y_N: np.ndarray, part_N: np.ndarray) -> float:
    """Held-out F1 (part 0) of a logistic probe on ``X_NM`` fit on part 2, its ridge and
    threshold those of the best F1 on part 1."""
    val, held = part_N == 1, part_N == 0
    best, start = (-1.0, None, 0.0), None
    for l2 in L2_GRID:
        scores_N, start = _logistic_scores(X_NM, y_N, part_N == 2, l2, start)
        threshold = best_threshold(scores_N[val], y_N[val])
        f1 = f1_score(scores_N[val] >= threshold, y_N[val])
        if f1 > best[0]:
            best = (f1, scores_N, threshold)
    _, scores_N, threshold = best
    return f1_score(scores_N[held] >= threshold, y_N[held])


def _logistic_scores(
    X_NM: torch.Tensor,
    y_N: np.ndarray,
    train_N: np.ndarray,
    l2: float,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
    """[N] logits of an L2 logistic regression fit on the ``train_N`` rows (from the
    weights ``start``, or 0 and the prior's log-odds), and its weights.

    Standardised through the weights (z = X (w / s) - (m / s) . w + b) rather than a
    standardised copy of X, which at 300k x 1536 would be 1.8 GB more.
    """
    X = X_NM.float()
    dev = X.device
    train = torch.as_tensor(train_N, device=dev)
    y = torch.as_tensor(y_N, dtype=torch.float32, device=dev)
    weight = train.float() / train.sum()
    mu, sd = _weighted_mean_std(X, weight)
    prior = y[train].mean().clamp(1e-6, 1 - 1e-6)
    if start is None:
        w = torch.zeros(X.shape[1], device=dev, requires_grad=True)
        b = torch.log(prior / (1 - prior)).reshape(1).clone().requires_grad_(True)
    else:
        w, b = (t.detach().clone().requires_grad_(True) for t in start)

    def logits() -> torch.Tensor:
        return X @ (w / sd) - (mu / sd) @ w + b

    def closure() -> torch.Tensor:
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits(), y, weight=weight, reduction="sum"
        )
        loss = bce + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt = torch.optim.LBFGS(
        [w, b], max_iter=LBFGS_STEPS, history_size=10, line_search_fn="strong_wolfe"
    )
    opt.step(closure)
    with torch.no_grad():
        return logits().cpu().numpy(), (w.detach(), b.detach())


def _weighted_mean_std(X_NM: torch.Tensor, weight_N: torch.Tensor, rows: int = 65_536):
    """[M] mean and standard deviation (1 where 0) under ``weight_N`` (summing to 1), a
    block of rows at a time: no copy of X."""
    mu = weight_N @ X_NM
    var = torch.zeros_like(mu)
    for start in range(0, X_NM.shape[0], rows):
        block = X_NM[start : start + rows] - mu
        var += weight_N[start : start + rows] @ (block * block)
    sd = var.sqrt()
    return mu, torch.where(sd > 0, sd, torch.ones_like(sd))
