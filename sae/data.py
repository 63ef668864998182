"""The embedding matrix a trainer reads: checks, the held-out split, rows read in pieces
from a memory-mapped matrix (past a vector budget), and a synthetic stand-in for demos and
tests (no corpus needed)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
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
    train_rows, eval_rows = split_rows(x_ND.shape[0], eval_fraction, seed)
    return Split(train=x_ND[train_rows], eval=x_ND[eval_rows])


def split_rows(N: int, eval_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, eval rows) of :func:`split` as int64 row numbers, for a matrix that is
    read in pieces (:class:`MappedRows`) rather than indexed in memory."""
    n_eval = round(N * eval_fraction)
    if eval_fraction > 0:
        n_eval = max(n_eval, 1)
    if N - n_eval < 2:
        raise DataError(
            f"{N} row(s) leave {N - n_eval} for training after a {eval_fraction:.0%} eval split; "
            "need at least 2"
        )
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    return perm[n_eval:], perm[:n_eval]


# ------------------------------------------------------ rows read in pieces
class MappedRows:
    """[N, d] rows of a matrix on disk (``np.load(path, mmap_mode="r")``), or the rows
    ``rows_N`` of one, read in pieces: what :meth:`take` or a slice returns is the only
    copy in memory (the OS page cache behind the map is the kernel's to reclaim).

    Values come back as float32 tensors, equal to those of the same rows in memory, so a
    run that reads its batches here matches one that indexes a tensor bit for bit.
    """

    def __init__(self, x_ND: np.ndarray, rows_N: np.ndarray | torch.Tensor | None = None):
        if x_ND.ndim != 2:
            raise DataError(f"expected a 2-D [N, d] matrix, got shape {tuple(x_ND.shape)}")
        if not np.issubdtype(x_ND.dtype, np.floating):
            raise DataError(f"expected floating point values, got {x_ND.dtype}")
        self._x = x_ND
        self._rows = None if rows_N is None else np.asarray(rows_N, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        n = self._x.shape[0] if self._rows is None else len(self._rows)
        return (n, self._x.shape[1])

    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the rows as float32 (what holding them all in memory would take)."""
        return self.shape[0] * self.shape[1] * 4

    def subset(self, rows: np.ndarray | torch.Tensor) -> MappedRows:
        """The view of rows ``rows`` (positions in this view) of the same file."""
        rows = np.asarray(rows, dtype=np.int64)
        return MappedRows(self._x, rows if self._rows is None else self._rows[rows])

    def take(self, idx_B: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[B, d] float32: rows ``idx_B`` (positions in this view), in ``idx_B``'s order.

        The file is read in ascending row order (pages in sequence, not at random), then
        the rows are put back in the order asked for.
        """
        pos = np.asarray(idx_B, dtype=np.int64)
        src = pos if self._rows is None else self._rows[pos]
        out = np.empty((len(src), self._x.shape[1]), dtype=np.float32)
        if np.all(src[1:] >= src[:-1]):
            # Rows in file order (a slice of a view): read straight into the result, not
            # through a second copy of it (mode="clip": "raise" buffers the whole read).
            np.take(self._x, src, axis=0, out=out, mode="clip")
            return torch.from_numpy(out)
        order = np.argsort(src, kind="stable")
        out[order] = self._x[src[order]]
        return torch.from_numpy(out)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """[len, d] float32 copy of consecutive rows (a slice of this view)."""
        if not isinstance(rows, slice):
            raise TypeError("MappedRows takes a slice; use take() for other rows")
        if self._rows is None:
            return torch.from_numpy(np.array(self._x[rows], dtype=np.float32))
        return self.take(np.arange(len(self))[rows])


def as_rows(x_ND):
    """``x_ND`` as :func:`row_chunks` reads it: a numpy array (a memmap stays on disk) or
    :class:`MappedRows` as it is, anything else as a tensor."""
    if isinstance(x_ND, np.ndarray | MappedRows):
        return x_ND
    return torch.as_tensor(x_ND)


def row_chunks(x_ND, size: int) -> Iterator[torch.Tensor]:
    """Consecutive [<= size, d] float32 pieces of ``x_ND`` (a tensor, a numpy array or
    memmap, or :class:`MappedRows`); one piece is read at a time, so a matrix on disk is
    never held whole."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    for start in range(0, x_ND.shape[0], size):
        piece = x_ND[start : start + size]
        if isinstance(piece, np.ndarray):
            piece = torch.from_numpy(np.array(piece, dtype=np.float32))
        yield piece.float()


def rows_within(budget_bytes: int | None, row_bytes: int, most: int, least: int = 1) -> int:
    """Rows per piece: as many as ``budget_bytes`` holds at ``row_bytes`` each, at most
    ``most`` and at least ``least`` (a stage cannot work on less than one batch); None:
    no budget, ``most``."""
    if budget_bytes is None:
        return max(most, least)
    return max(least, min(most, budget_bytes // max(row_bytes, 1)))


def check_rows(x_ND, d_in: int, what: str, chunk: int) -> None:
    """:func:`as_matrix`'s checks of a matrix read in pieces of ``chunk`` rows (bad rows
    named by their row numbers in the whole matrix)."""
    if x_ND.shape[0] == 0:
        raise DataError(f"{what}: no rows (empty data)")
    if x_ND.shape[1] != d_in:
        raise DataError(f"{what}: rows have dimension {x_ND.shape[1]}, the SAE expects d_in={d_in}")
    n_bad, first = 0, []
    for start, piece in zip(range(0, x_ND.shape[0], chunk), row_chunks(x_ND, chunk), strict=True):
        bad = (~torch.isfinite(piece).all(dim=1)).nonzero().squeeze(1)
        n_bad += bad.numel()
        first += (bad[: 5 - len(first)] + start).tolist()
    if n_bad:
        raise DataError(f"{what}: {n_bad} row(s) hold NaN or inf values (first rows: {first})")


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
