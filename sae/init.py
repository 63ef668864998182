"""Initialisation from data: the pre-bias as a median of the embeddings."""

from __future__ import annotations

import torch


def geometric_median(x_ND: torch.Tensor, iters: int = 20, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld iterations for argmin_m sum_i ||x_i - m||; [d].

    Starts from the coordinate-wise mean; each step is a reweighted mean with
    weights 1 / ||x_i - m||, clamped so a point on the median does not divide by 0.
    """
    x = x_ND.double()
    m = x.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        m_new = (w[:, None] * x).sum(dim=0) / w.sum()
        if (m_new - m).norm() <= eps * (1.0 + m.norm()):
            m = m_new
            break
        m = m_new
    return m.to(x_ND.dtype)


def data_median(x_ND: torch.Tensor, iters: int) -> torch.Tensor:
    """Geometric median for iters > 0, else the coordinate-wise median (the paper's code)."""
    if iters > 0:
        return geometric_median(x_ND, iters=iters)
    return x_ND.median(dim=0).values
