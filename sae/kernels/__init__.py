"""The three sparse ops every TopK SAE step needs, and the one place that picks their backend.

Contracts (B samples, k selected latents, n latents, d dimension; outputs float32):

    gather_weighted_sum(idx [B,k], val [B,k], table [n,d], bias [d]?) -> [B,d]
        out[b] = sum_j val[b,j] * table[idx[b,j]] (+ bias)     decode, encoder dx
    gather_dot(idx [B,k], table [n,d], vec [B,d]) -> [B,k]
        out[b,j] = <vec[b], table[idx[b,j]]>                   decode backward dv
    segment_sum(idx [B,k], w [B,k], rows [B,d], n, with_weight_sum) -> ([n,d], [n]?)
        out[i] = sum over (b,j) with idx[b,j] == i of w[b,j] * rows[b]
                                                               dW_dec, dW_enc, db_lat

Triton runs for CUDA tensors when :func:`choose_backend` says so: Triton imports, a
CUDA device is present and ``SAE_KERNELS`` is ``auto`` (the default) or ``triton``;
``SAE_KERNELS=torch`` forces the torch fallback, which runs everything else too. The
variable is read when asked, never on import.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType
from typing import NamedTuple

import torch

from sae.kernels import torch_ops


class Backend(NamedTuple):
    name: str
    """'triton' or 'torch'."""
    reason: str


def choose_backend() -> Backend:
    """Which implementation runs the sparse ops on CUDA tensors, and why (``SAE_KERNELS``)."""
    wanted = os.environ.get("SAE_KERNELS", "auto").strip().lower()
    if wanted not in ("auto", "torch", "triton"):
        raise ValueError(f"SAE_KERNELS must be auto, torch or triton, got {wanted!r}")
    if wanted == "torch":
        return Backend("torch", "forced by SAE_KERNELS=torch")
    if importlib.util.find_spec("triton") is None:
        return Backend("torch", "triton is not installed")
    if not torch.cuda.is_available():
        return Backend("torch", "no CUDA device")
    return Backend("triton", "CUDA device and triton present")


@functools.cache
def _triton_ops() -> ModuleType | None:
    if choose_backend().name != "triton":
        return None
    from sae.kernels import triton_ops

    return triton_ops


def ops_for(t: torch.Tensor) -> ModuleType:
    """The op module for tensors on ``t``'s device."""
    if t.is_cuda:
        ops = _triton_ops()
        if ops is not None:
            return ops
    return torch_ops


def reset_backend() -> None:
    """Forget the cached choice (after changing ``SAE_KERNELS``)."""
    _triton_ops.cache_clear()


@contextlib.contextmanager
def forced_backend(name: str | None) -> Iterator[None]:
    """``SAE_KERNELS=name`` for the block (None: the default choice), then as it was."""
    saved = os.environ.get("SAE_KERNELS")
    _set_kernels(name)
    try:
        yield
    finally:
        _set_kernels(saved)


def _set_kernels(name: str | None) -> None:
    if name is None:
        os.environ.pop("SAE_KERNELS", None)
    else:
        os.environ["SAE_KERNELS"] = name
    reset_backend()
