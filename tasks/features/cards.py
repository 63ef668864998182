"""Per-feature statistics for the cards: density, mean activation, top and middle papers,
nearest decoder neighbours. Everything comes from the sparse codes' CSC view, so no step
scans all N papers once per latent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sae.codes import SparseCodes
from tasks.features.schema import MIDDLE_PAPERS, NEIGHBOURS, TOP_PAPERS


@dataclass(frozen=True)
class LatentStats:
    counts_N: np.ndarray  # [n] int64, papers each latent fires on
    density: np.ndarray  # [n] float64, counts / N
    mean_act: np.ndarray  # [n] float64, mean nonzero activation (0 for dead latents)
    top: list[list[tuple[int, float]]]  # per latent, (row, activation), highest first
    middle: list[list[tuple[int, float]]]  # per latent, rows around its median activation


def latent_stats(
    codes: SparseCodes, top: int = TOP_PAPERS, middle: int = MIDDLE_PAPERS
) -> LatentStats:
    offsets, rows, vals = codes.by_latent()
    counts = np.diff(offsets)
    fire = codes.firing()
    sums = np.bincount(
        codes.indices_NW[fire],
        weights=codes.values_NW[fire].astype(np.float64),
        minlength=codes.n_latents,
    )
    mean_act = np.divide(sums, counts, out=np.zeros(codes.n_latents), where=counts > 0)
    tops, middles = [], []
    for j in range(codes.n_latents):
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        tops.append(_pairs(rows, vals, lo, min(hi, lo + top)))
        # The top papers say what a feature is at its strongest; a few at its median say
        # what it usually means, which is what most of its papers look like.
        if hi - lo > top:
            mid = (lo + hi) // 2
            start = max(lo + top, mid - middle // 2)
            middles.append(_pairs(rows, vals, start, min(hi, start + middle)))
        else:
            middles.append([])
    n = max(codes.n_rows, 1)
    return LatentStats(counts, counts / n, mean_act, tops, middles)


def _pairs(rows: np.ndarray, vals: np.ndarray, lo: int, hi: int) -> list[tuple[int, float]]:
    return [(int(r), float(v)) for r, v in zip(rows[lo:hi], vals[lo:hi], strict=True)]


def decoder_neighbours(
    W_dec_ND: torch.Tensor | np.ndarray, m: int = NEIGHBOURS, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Each decoder row's ``m`` nearest other rows by cosine: (ids [n, m], cosines [n, m]).

    Chunked so the [n, n] similarity matrix (600 MB at n = 12,288) never exists whole.
    """
    W = torch.as_tensor(W_dec_ND).detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = W.shape[0]
    m = min(m, n - 1)
    ids = np.zeros((n, m), dtype=np.int64)
    cos = np.zeros((n, m), dtype=np.float32)
    for start in range(0, n, chunk):
        sim = W[start : start + chunk] @ W.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -2.0  # a row is not its own neighbour
        v, i = sim.topk(m, dim=1)
        ids[start : start + chunk], cos[start : start + chunk] = i.numpy(), v.numpy()
    return ids, cos
