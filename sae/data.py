"""The embedding matrix a trainer reads: checks, the held-out split, and a synthetic
stand-in for demos and tests (no corpus needed)."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch

from sae.errors import DataError


class Split(NamedTuple):
    train: torch.Tensor
    """[N_train, d] float32."""
    eval: torch.Tensor
    """[N_eval, d] float32."""


def as_matrix(x, d_in: int | None = None, what: str = "embeddings") -> torch.Tensor:
    """Check and return ``x`` as a float32 [N, d] tensor (numpy and memmaps are wrapped).

    Raises :class:`DataError` naming the problem: not 2-D, empty, wrong d, or rows
    holding NaN/inf (with their count and first row numbers).
    """
    if isinstance(x, np.ndarray):
        # A read-only memmap stays on disk and is only ever read; torch warns regardless.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what}: expected a tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise DataError(f"{what}: expected a 2-D [N, d] matrix, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{what}: no rows (empty data)")
    if d_in is not None and x.shape[1] != d_in:
        raise DataError(f"{what}: rows have dimension {x.shape[1]}, the SAE expects d_in={d_in}")
    if not x.is_floating_point():
        raise DataError(f"{what}: expected floating point values, got {x.dtype}")
    x = x.float()
    bad = ~torch.isfinite(x).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad:
        first = bad.nonzero().squeeze(1)[:5].tolist()
        raise DataError(f"{what}: {n_bad} row(s) hold NaN or inf values (first rows: {first})")
    return x


def split(x_ND: torch.Tensor, eval_fraction: float, seed: int) -> Split:
    """A deterministic random split; the eval part is never trained on."""
    N = x_ND.shape[0]
    n_eval = round(N * eval_fraction)
    if eval_fraction > 0:
        n_eval = max(n_eval, 1)
    if N - n_eval < 2:
        raise DataError(
            f"{N} row(s) leave {N - n_eval} for training after a {eval_fraction:.0%} eval split; "
            "need at least 2"
        )
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    return Split(train=x_ND[perm[n_eval:]], eval=x_ND[perm[:n_eval]])


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
