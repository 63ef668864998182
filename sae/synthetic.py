"""Random-but-structured embeddings for demos and tests (no corpus needed)."""

from __future__ import annotations

import torch


def sparse_dictionary_data(
    n_rows: int, d: int, n_atoms: int = 128, active: int = 4, noise: float = 0.01, seed: int = 0
) -> torch.Tensor:
    """Unit-norm rows [n_rows, d], each a positive mix of ``active`` hidden atoms plus noise.

    A TopK SAE can explain such data well (unlike isotropic noise), so a short run
    shows the NMSE falling far below 1.
    """
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.randint(0, n_atoms, (n_rows, active), generator=g)
    coef = torch.rand(n_rows, active, generator=g) + 0.5
    x = torch.zeros(n_rows, n_atoms).scatter_add_(1, idx, coef) @ atoms
    x += noise * torch.randn(n_rows, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)
