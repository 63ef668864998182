"""Feature lineage: features of two dictionaries matched by the cosine of their decoder rows.

As the paper does across widths (O'Neill et al., arXiv 2408.00657, sec. 5): a feature of a
small dictionary whose direction reappears as several features of a larger one has split.
:func:`splitting` reads that across capacities; :func:`compare` gives each feature of a new
champion its status against the previous one (stable, split, new) and the previous
features that are gone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Thresholds (cosines of unit decoder rows). Two random directions in d = 384 (MiniLM) have
# cosine ~N(0, 1/sqrt(d) = 0.05), so 0.5 is ~10 sigma above chance: a real shared direction,
# enough to call a feature a part of an earlier one (split_cos, min_cos). 0.7 (under 46
# degrees) asks for the same direction, not a part of it, before a match counts as stable.
STABLE_COS = 0.7
SPLIT_COS = 0.5


def _unit_rows(W) -> np.ndarray:
    if hasattr(W, "detach"):
        W = W.detach().to("cpu").float().numpy()
    W = np.asarray(W, dtype=np.float32)
    norm = np.linalg.norm(W, axis=1, keepdims=True)
    # A zero row (a never-trained latent) matches nothing better than cosine 0.
    return W / np.where(norm > 0, norm, 1.0)


def best_matches(W_a, W_b, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``W_a`` [na, d], the row of ``W_b`` [nb, d] with the highest cosine.

    Numpy or torch inputs. Rows of a go ``chunk`` at a time, so at most [chunk, nb]
    cosines exist at once. Returns (idx [na] int64, cos [na] float32); ties: the lower id.
    """
    A, B = _unit_rows(W_a), _unit_rows(W_b)
    idx = np.zeros(A.shape[0], dtype=np.int64)
    cos = np.zeros(A.shape[0], dtype=np.float32)
    if B.shape[0] == 0:
        return idx, cos
    for start in range(0, A.shape[0], chunk):
        sims = A[start : start + chunk] @ B.T
        best = sims.argmax(axis=1)
        idx[start : start + best.size] = best
        cos[start : start + best.size] = sims[np.arange(best.size), best]
    return idx, cos


def _groups(targets: np.ndarray, ok: np.ndarray, n_targets: int) -> list[list[int]]:
    """For each target t, the sources s with targets[s] == t and ok[s], in id order."""
    out: list[list[int]] = [[] for _ in range(n_targets)]
    for s in np.flatnonzero(ok).tolist():
        out[int(targets[s])].append(s)
    return out


def splitting(W_small, W_large, *, min_cos: float = SPLIT_COS) -> dict:
    """How the features of ``W_small`` reappear in ``W_large`` (same k, more latents).

    A small feature's splits are the large features whose best small match is it with
    cosine >= ``min_cos``. Returns ``match``/``match_cos`` (each small feature's best large
    match), ``splits`` (list per small feature), ``n_split`` (>= 2 splits), ``n_one``,
    ``n_none`` and ``mean_best_cos`` (mean of ``match_cos``).
    """
    match, match_cos = best_matches(W_small, W_large)
    back, back_cos = best_matches(W_large, W_small)
    splits = _groups(back, back_cos >= min_cos, len(match))
    sizes = np.array([len(s) for s in splits], dtype=np.int64)
    return {
        "match": match,
        "match_cos": match_cos,
        "splits": splits,
        "n_split": int((sizes >= 2).sum()),
        "n_one": int((sizes == 1).sum()),
        "n_none": int((sizes == 0).sum()),
        "mean_best_cos": float(match_cos.mean()) if match_cos.size else 0.0,
    }


@dataclass
class Lineage:
    """Each new feature's status against the previous dictionary, and what is gone."""

    status_new: list[str]  # "stable" | "split" | "new", per new feature
    match_new: tuple[np.ndarray, np.ndarray]  # best previous match (idx, cos) per new feature
    gone: list[int]  # previous features no new feature matches with cos >= split_cos

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("stable", "split", "new")}
        for s in self.status_new:
            out[s] += 1
        out["gone"] = len(self.gone)
        return out


def compare(
    W_prev, W_new, *, stable_cos: float = STABLE_COS, split_cos: float = SPLIT_COS
) -> Lineage:
    """Status of each row of ``W_new`` against ``W_prev``.

    stable: mutual best match with cosine >= ``stable_cos``. split: not stable, and one of
    >= 2 new features whose best previous match is the same previous feature with cosine
    >= ``split_cos`` (a stable one counts among them). new: otherwise. A previous feature
    is gone when no new feature's best match is it with cosine >= ``split_cos``.
    """
    fwd, fwd_cos = best_matches(W_new, W_prev)
    back, _ = best_matches(W_prev, W_new)
    n_new, n_prev = len(fwd), len(back)
    mutual = back[fwd] == np.arange(n_new) if n_prev else np.zeros(n_new, dtype=bool)
    stable = mutual & (fwd_cos >= stable_cos)
    close = fwd_cos >= split_cos
    per_prev = np.bincount(fwd[close], minlength=n_prev)
    split = ~stable & close & (per_prev[fwd] >= 2) if n_prev else np.zeros(n_new, dtype=bool)
    status = np.where(stable, "stable", np.where(split, "split", "new"))
    gone = np.flatnonzero(per_prev == 0).tolist()
    return Lineage(status_new=status.tolist(), match_new=(fwd, fwd_cos), gone=gone)
