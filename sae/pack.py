"""One encoder matmul for every SAE of a pack.

The cells' encoder matrices live as row blocks of one [sum n, d] buffer, and each
cell's ``W_enc`` parameter is a view of its block (no copy per step: optimiser
updates land in the buffer). One matmul of the batch against the buffer gives all
cells' pre-activations; a cell's own b_pre folds into a bias,

    z = W_enc (x - b_pre) + b_lat = x @ W_enc^T + (b_lat - W_enc b_pre),

so the batch is read once, whatever the cells' pre-biases.

How the matmul is issued is chosen by measurement. On CUDA: one [B, d] x [d, sum n]
matmul. On CPU that giant matmul ran 2.8x slower than one matmul per cell (2 cores,
d=384, B=1024, the 20-cell grid: 1.87 s vs 0.67 s; the [B, sum n] output does not
stay in cache), so there each cell gets its own matmul over the same resident batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sae.model import TopKSAE, affine


class PackEncoder:
    def __init__(self, models: Sequence[TopKSAE], one_matmul: bool | None = None):
        """Rebinds every model's ``W_enc`` to a view of the shared buffer.

        Call before creating optimisers (they must see the rebound parameters).
        ``one_matmul``: one matmul for the whole pack (None: on CUDA only).
        """
        if not models:
            raise ValueError("a pack needs at least one model")
        d = models[0].d_in
        device = models[0].W_enc.device
        sizes = [m.n_latents for m in models]
        self.models = list(models)
        self.one_matmul = device.type == "cuda" if one_matmul is None else one_matmul
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
    ) -> Iterator[torch.Tensor]:
        """Each model's z_pre [B, n], in pack order.

        Per-cell matmuls are issued lazily, as the caller asks for the next cell, so
        only one cell's [B, n] matrix is alive at a time (15% faster on CPU than
        computing all of them first: the 20-cell grid's would be 578 MB).
        """
        biases = [m.b_lat - m.W_enc @ m.b_pre for m in self.models]
        if self.one_matmul:
            z = affine(x_BD, self.W_all_ND, torch.cat(biases), compute_dtype)
            return iter([z[:, s] for s in self.slices])
        return (
            affine(x_BD, self.W_all_ND[s], b, compute_dtype)
            for s, b in zip(self.slices, biases, strict=True)
        )
