"""An embedding matrix given as a file (or a synthetic one), for ``sae train``: the same
pack training as a sweep, without corpus, snapshot or MLflow."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from sae.data import DataError, sparse_dictionary_data

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class MatrixFile:
    """``path`` ('synthetic' or an [N, d] .npy / .pt / .safetensors), its first ``limit``
    rows; ``id`` names the contents (file name, size, mtime, rows), so an edited file
    gets new cells and the same file resumes."""

    path: str
    limit: int | None
    seed: int
    id: str

    @property
    def embedder(self) -> str:
        return "none" if self.path == SYNTHETIC else "file"

    def load(self) -> torch.Tensor:
        try:
            return self._load()
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
            raise DataError(f"--data {self.path}: cannot read a matrix from it: {exc}") from exc

    def _load(self) -> torch.Tensor:
        if self.path == SYNTHETIC:
            return sparse_dictionary_data(
                self.limit or 20000, 384, n_atoms=512, active=6, seed=self.seed
            )
        path = Path(self.path)
        rows = self.limit
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, mmap_mode="r")[:rows].copy())
        if path.suffix == ".pt":
            return torch.load(path, map_location="cpu", weights_only=True)[:rows]
        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise DataError(f"--data {self.path}: expected one tensor, found {sorted(tensors)}")
        return next(iter(tensors.values()))[:rows]


def matrix_file(path: str, limit: int | None, seed: int) -> MatrixFile:
    """The matrix at ``path``, checked to exist and be of a readable type."""
    if path == SYNTHETIC:
        rows = limit or 20000
        return MatrixFile(path, limit, seed, f"synthetic-{rows}x384-s{seed}")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--data {path}: no such file")
    if p.suffix not in (".npy", ".pt", ".safetensors"):
        raise DataError(
            f"--data {path}: unsupported file type {p.suffix!r} (use .npy, .pt or .safetensors)"
        )
    stat = p.stat()
    rows = "all" if limit is None else limit
    return MatrixFile(path, limit, seed, f"{p.name}-{stat.st_size}-{int(stat.st_mtime)}-{rows}")
