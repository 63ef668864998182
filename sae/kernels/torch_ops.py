"""The sparse TopK ops in plain torch: the fallback on CPU, or when Triton is off.

Built on ``embedding_bag``, which sums selected rows without materialising the
[B, k, d] gathered tensor. Inputs are taken to float32 first: the contract is float32
accumulation, and CUDA's embedding_bag has no bf16 per-sample-weight backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def gather_weighted_sum(indices_BK, values_BK, table_ND, bias_D=None) -> torch.Tensor:
    B, k = indices_BK.shape
    if k == 0:
        out = torch.zeros(B, table_ND.shape[1], dtype=torch.float32, device=table_ND.device)
    else:
        out = F.embedding_bag(
            indices_BK, _f32(table_ND), mode="sum", per_sample_weights=_f32(values_BK)
        )
    return out if bias_D is None else out + bias_D


def gather_dot(indices_BK, table_ND, vec_BD) -> torch.Tensor:
    """Reuses ``embedding_bag``'s per-sample-weight gradient: exactly these dot products."""
    if indices_BK.numel() == 0:
        return torch.zeros(indices_BK.shape, dtype=torch.float32, device=table_ND.device)
    with torch.enable_grad():
        probe_BK = torch.zeros(
            indices_BK.shape, dtype=torch.float32, device=table_ND.device, requires_grad=True
        )
        out_BD = F.embedding_bag(
            indices_BK, _f32(table_ND.detach()), mode="sum", per_sample_weights=probe_BK
        )
        (grad_BK,) = torch.autograd.grad(out_BD, probe_BK, _f32(vec_BD))
    return grad_BK


def segment_sum(indices_BK, weights_BK, rows_BD, n: int, with_weight_sum: bool = False):
    """Sorting the B*k entries by latent makes n bags that ``embedding_bag`` sums in one pass."""
    k = indices_BK.shape[1]
    device = rows_BD.device
    flat = indices_BK.reshape(-1)
    wsum = None
    if with_weight_sum:
        wsum = torch.zeros(n, dtype=torch.float32, device=device)
        wsum.index_add_(0, flat, weights_BK.reshape(-1).float())
    if flat.numel() == 0:
        return torch.zeros(n, rows_BD.shape[1], dtype=torch.float32, device=device), wsum
    order = torch.argsort(flat, stable=True)
    counts_N = torch.bincount(flat, minlength=n)
    offsets_N = torch.zeros(n, dtype=torch.long, device=device)
    offsets_N[1:] = counts_N.cumsum(0)[:-1]
    out = F.embedding_bag(
        torch.div(order, k, rounding_mode="floor"),
        _f32(rows_BD),
        offsets_N,
        mode="sum",
        per_sample_weights=_f32(weights_BK.reshape(-1)[order]),
    )
    return out, wsum
