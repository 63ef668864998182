"""Which implementation of the sparse ops runs: the Triton kernels or the torch fallback.

``SAE_KERNELS=torch`` forces the fallback; ``auto`` (the default) uses Triton when it
imports and a CUDA device is present. Read when asked, never on import.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple


class Backend(NamedTuple):
    name: str
    """'triton' or 'torch'."""
    reason: str


def choose_backend() -> Backend:
    wanted = os.environ.get("SAE_KERNELS", "auto").strip().lower()
    if wanted not in ("auto", "torch", "triton"):
        raise ValueError(f"SAE_KERNELS must be auto, torch or triton, got {wanted!r}")
    if wanted == "torch":
        return Backend("torch", "forced by SAE_KERNELS=torch")
    if importlib.util.find_spec("triton") is None:
        return Backend("torch", "triton is not installed")
    import torch

    if not torch.cuda.is_available():
        return Backend("torch", "no CUDA device")
    return Backend("triton", "CUDA device and triton present")
