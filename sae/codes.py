"""Sparse codes of a whole matrix, streamed: what feature analysis reads instead of [N, n].

A dense [N, n] activation matrix of 300k papers at n = 12,288 would be 14.7 GB; the codes
are N x w values and ids (w = k for TopK), 8 bytes each: 300k x 128 -> 307 MB. Rows go
through the model ``batch_size`` at a time, so the peak beside the output is one batch's
[batch, n] pre-activations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from sae.data import as_matrix


@dataclass(frozen=True)
class SparseCodes:
    """Row i holds latent ``indices_NW[i, j]`` at ``values_NW[i, j]``; 0 marks an unused slot
    (BatchTopK below its threshold, or a latent whose ReLU'd value is 0)."""

    values_NW: np.ndarray  # float32
    indices_NW: np.ndarray  # int32
    n_latents: int

    @property
    def n_rows(self) -> int:
        return self.values_NW.shape[0]

    def firing(self) -> np.ndarray:
        """[N, W] bool: the slots that hold a firing latent."""
        return self.values_NW > 0

    def counts(self) -> np.ndarray:
        """[n] int64: how many rows each latent fires on."""
        return np.bincount(self.indices_NW[self.firing()], minlength=self.n_latents)

    def by_latent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A CSC view: (offsets [n + 1], rows [nnz], values [nnz]); latent j's rows are
        ``rows[offsets[j]:offsets[j + 1]]``, highest activation first."""
        fire = self.firing()
        rows = np.nonzero(fire)[0].astype(np.int64)
        lat = self.indices_NW[fire].astype(np.int64)
        vals = self.values_NW[fire]
        order = np.lexsort((-vals, lat))
        offsets = np.zeros(self.n_latents + 1, dtype=np.int64)
        np.cumsum(np.bincount(lat, minlength=self.n_latents), out=offsets[1:])
        return offsets, rows[order], vals[order]

    def dense(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """[len(rows), n] float32 activations of some rows (for small checks only)."""
        values, indices = self.values_NW[rows], self.indices_NW[rows]
        out = np.zeros((values.shape[0], self.n_latents), dtype=np.float32)
        fire = values > 0  # an unused slot's id may repeat a firing one's: never write it
        out[np.nonzero(fire)[0], indices[fire]] = values[fire]
        return out


def encode_batches(
    model, batches: Iterable[np.ndarray | torch.Tensor], device: str | torch.device = "cpu"
) -> SparseCodes:
    """Codes of the rows of ``batches`` ([B_i, d] each), in order, by ``model.encode``."""
    values, indices = [], []
    with torch.no_grad():
        for batch in batches:
            x_BD = as_matrix(batch, model.d_in).to(device)
            v_BW, i_BW = model.encode(x_BD)
            values.append(v_BW.float().cpu().numpy())
            indices.append(i_BW.to(torch.int32).cpu().numpy())
    if not values:
        width = model.k
        return SparseCodes(
            np.zeros((0, width), np.float32), np.zeros((0, width), np.int32), model.n_latents
        )
    return SparseCodes(np.concatenate(values), np.concatenate(indices), model.n_latents)


def encode_matrix(
    model, x_ND: np.ndarray | torch.Tensor, batch_size: int = 4096, device="cpu"
) -> SparseCodes:
    """Codes of every row of ``x_ND`` (a numpy memmap stays on disk), ``batch_size`` at a time."""
    n = x_ND.shape[0]
    return encode_batches(
        model, (x_ND[i : i + batch_size] for i in range(0, n, batch_size)), device
    )
