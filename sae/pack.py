"""One encoder matmul for every SAE of a pack.

The cells' encoder matrices live as row blocks of one [sum n, d] buffer, and each
cell's ``W_enc`` parameter is a view of its block (no copy per step: optimiser
updates land in the buffer). One matmul of the batch against the buffer gives all
cells' pre-activations; a cell's own b_pre folds into a bias,

    z = W_enc (x - b_pre) + b_lat = x @ W_enc^T + (b_lat - W_enc b_pre),

so the batch is read once, whatever the cells' pre-biases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sae.model import TopKSAE


class PackEncoder:
    def __init__(self, models: Sequence[TopKSAE]):
        """Rebinds every model's ``W_enc`` to a view of the shared buffer.

        Call before creating optimisers (they must see the rebound parameters).
        """
        if not models:
            raise ValueError("a pack needs at least one model")
        d = models[0].d_in
        device = models[0].W_enc.device
        sizes = [m.n_latents for m in models]
        self.models = list(models)
        self.W_all_ND = torch.empty(sum(sizes), d, device=device)
        self.slices = []
        start = 0
        for m, n in zip(self.models, sizes, strict=True):
            block = self.W_all_ND[start : start + n]
            block.copy_(m.W_enc.detach())
            m.W_enc = nn.Parameter(block)
            self.slices.append(slice(start, start + n))
            start += n

    @torch.no_grad()
    def pre_activations(
        self, x_BD: torch.Tensor, compute_dtype: torch.dtype | None = None
    ) -> list[torch.Tensor]:
        """Each model's z_pre [B, n] (views of one [B, sum n] matrix), in pack order."""
        bias = torch.cat([m.b_lat - m.W_enc @ m.b_pre for m in self.models])
        if compute_dtype is not None and compute_dtype != x_BD.dtype:
            z = (x_BD.to(compute_dtype) @ self.W_all_ND.to(compute_dtype).T).float() + bias
        else:
            z = torch.addmm(bias, x_BD, self.W_all_ND.T)
        return [z[:, s] for s in self.slices]
