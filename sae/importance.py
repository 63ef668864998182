"""Dictionary importance and pruning: progressive coding in a plain SAE (arXiv 2505.00190).

Importance of latent i (the definition used here): the rise of the held-out NMSE when
latent i alone is removed from every reconstruction, all other codes unchanged,

    importance_i = sum over (sample b, slot j) with I_bj = i of
                   v_bj * (2 r_b . w_i + v_bj * |w_i|^2)  /  sum_b |x_b - mean(x)|^2

with r_b = x_b - x_hat_b the residual and w_i the latent's decoder row (unit norm in a
TopK SAE): removing v w_i from x_hat turns |r|^2 into |r + v w|^2. The denominator is
the split's total centred variance, the one :func:`sae.metrics.evaluate` divides by, so
importance is in NMSE units. It can be negative for a latent that overshoots on average.

:func:`pruned_nmse` keeps the first m latents of an order and lets the encoder choose
its top k among them only, so a plain SAE pruned by importance can be set beside the
prefixes of a Matryoshka SAE of the same n.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch

from sae.data import as_rows, row_chunks


class PowerLawFit(NamedTuple):
    """importance ~ C * rank^-exponent, fitted in log10-log10."""

    exponent: float
    """Minus the slope of log10(importance) against log10(rank)."""
    r2: float
    """Coefficient of determination of that line (NaN when undefined)."""


@torch.no_grad()
def latent_importance(model, x_ND, batch_size: int = 4096) -> np.ndarray:
    """Each latent's importance on ``x_ND`` [N, d] (module doc): float64 [n].

    One pass: the top-k codes of every row, their residual, and per selected latent
    the exact change of the squared error, scattered into its entry. ``x_ND``: a tensor,
    a numpy array or memmap, or :class:`sae.data.MappedRows`, read ``batch_size`` rows at
    a time (holding [batch_size, 2d + n] values, whatever N).
    """
    x_ND = _rows(x_ND, batch_size)
    N = x_ND.shape[0]
    device = model.b_pre.device
    W_dec = model.W_dec
    w_sq_N = W_dec.double().pow(2).sum(dim=1)
    rise_N = torch.zeros(model.n_latents, dtype=torch.float64, device=device)
    sum_x = torch.zeros(model.d_in, dtype=torch.float64, device=device)
    sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
    for piece in row_chunks(x_ND, batch_size):
        x = piece.to(device=device, dtype=torch.float32)
        values_BK, indices_BK = model.encode(x)
        residual_BD = x - model.decode(values_BK, indices_BK)
        # A dense [B, n] product bounds memory by B*n, where gathering rows needs B*k*d.
        r_dot_w_BK = (residual_BD @ W_dec.T).gather(1, indices_BK).double()
        v = values_BK.double()
        rise = v * (2.0 * r_dot_w_BK + v * w_sq_N[indices_BK])
        rise_N.index_add_(0, indices_BK.reshape(-1), rise.reshape(-1))
        xd = x.double()
        sum_x += xd.sum(dim=0)
        sum_x2 += xd.pow(2).sum()
    total = sum_x2 - sum_x.pow(2).sum() / N
    return (rise_N / total.clamp_min(1e-30)).cpu().numpy()


def power_law_fit(importance) -> PowerLawFit:
    """Least-squares line of log10(importance) on log10(rank), importance sorted descending.

    Ranks start at 1 and are counted over all entries; only positive importances enter
    the fit (dead latents have 0, overshooting ones may be negative). NaNs when fewer
    than two positive entries remain.
    """
    imp = np.sort(np.asarray(importance, dtype=np.float64).reshape(-1))[::-1]
    rank = np.arange(1, imp.size + 1, dtype=np.float64)
    keep = imp > 0
    if keep.sum() < 2:
        return PowerLawFit(math.nan, math.nan)
    log_r, log_i = np.log10(rank[keep]), np.log10(imp[keep])
    slope, intercept = np.polyfit(log_r, log_i, 1)
    ss_res = float(((log_i - (slope * log_r + intercept)) ** 2).sum())
    ss_tot = float(((log_i - log_i.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return PowerLawFit(float(-slope), r2)


@torch.no_grad()
def pruned_nmse(
    model, x_ND, order, sizes: Iterable[int], batch_size: int = 4096
) -> dict[int, float]:
    """NMSE on ``x_ND`` [N, d] of ``model`` kept to the first m latents of ``order``, per m.

    ``order`` [n] ranks the latents (e.g. ``np.argsort(-importance)``); for each m in
    ``sizes`` the others' pre-activations are set to -inf, so the model's inference rule
    (each row's top k for TopK, the threshold for BatchTopK) picks among the kept latents
    only, then decodes as usual. The pre-activations come from ``model.pre_activations``
    once per batch and serve every m. With ``order = arange(n)`` this is the prefix NMSE
    of :func:`sae.metrics.prefix_metrics`. ``x_ND`` is read as by :func:`latent_importance`.
    """
    x_ND = _rows(x_ND, batch_size)
    N = x_ND.shape[0]
    n = model.n_latents
    order_N = torch.as_tensor(np.asarray(order), dtype=torch.long).reshape(-1)
    if sorted(order_N.tolist()) != list(range(n)):
        raise ValueError(f"order must be a permutation of the model's {n} latents")
    sizes = sorted({int(m) for m in sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > n:
        raise ValueError(f"sizes must lie in [1, {n}], got {sizes}")
    device = model.b_pre.device
    rank_N = torch.empty(n, dtype=torch.long)
    rank_N[order_N] = torch.arange(n)
    rank_N = rank_N.to(device)
    sq_err = torch.zeros(len(sizes), dtype=torch.float64, device=device)
    sum_x = torch.zeros(model.d_in, dtype=torch.float64, device=device)
    sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
    for piece in row_chunks(x_ND, batch_size):
        x = piece.to(device=device, dtype=torch.float32)
        z_pre_BN = model.pre_activations(x - model.b_pre)
        for s, m in enumerate(sizes):
            values_BK, indices_BK = _select(model, z_pre_BN.masked_fill(rank_N >= m, -math.inf))
            x_hat = model.decode(values_BK, indices_BK)
            sq_err[s] += (x_hat.double() - x.double()).pow(2).sum()
        xd = x.double()
        sum_x += xd.sum(dim=0)
        sum_x2 += xd.pow(2).sum()
    total = sum_x2 - sum_x.pow(2).sum() / N
    nmse = (sq_err / total.clamp_min(1e-30)).tolist()
    return dict(zip(sizes, nmse, strict=True))


def _select(model, z_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B, w] after ReLU, indices [B, w]) of the model's inference code of ``z_BN``.

    A model with ``select`` (TopK and BatchTopK) chooses by its own rule, so a BatchTopK
    SAE is pruned under its threshold; otherwise each row's top k. Masked latents that a
    row's top w still reaches (fewer than w kept) come out as 0 and decode to nothing.
    """
    select = getattr(model, "select", None)
    if select is None:
        values, indices = z_BN.topk(model.k, dim=1, sorted=True)
        return torch.relu(values), indices
    values, indices, keep = select(z_BN, batch=False)
    if keep is None:  # TopK: the first k of k_encode (Multi-TopK also takes 4k)
        return torch.relu(values[:, : model.k]), indices[:, : model.k]
    return torch.relu(values).masked_fill(~keep, 0.0), indices


def _rows(x_ND, batch_size: int):
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    x_ND = as_rows(x_ND)
    if x_ND.ndim != 2 or x_ND.shape[0] == 0:
        raise ValueError(f"need a non-empty [N, d_in] input, got shape {tuple(x_ND.shape)}")
    return x_ND


__all__ = ["PowerLawFit", "latent_importance", "power_law_fit", "pruned_nmse"]
