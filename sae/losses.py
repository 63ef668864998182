"""Reconstruction losses."""

from __future__ import annotations

import torch


def fvu(x_hat_BD: torch.Tensor, x_BD: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: the centred NMSE of SAE_RECIPE.md.

    sum((x_hat - x)^2) / sum((mean_over_batch(x) - x)^2). Centred on purpose: dividing
    by mean(x^2) gives other numbers for unit-norm embeddings. NaN when the batch has
    no variance (callers decide what that means).
    """
    x = x_BD.float()
    err = (x_hat_BD.float() - x).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum()
    return err / total
