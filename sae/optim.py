"""Gradient clipping that skips the rescale pass when it would be a no-op."""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm``; returns the norm before clipping.

    On the CPU, reading the norm costs nothing, so grads are only rescaled when the
    norm is too large (saving one pass over every gradient on most steps). On an
    accelerator the rescale is always issued, which avoids a host sync per step.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = max_norm / (norm + 1e-6)
    if grads[0].device.type == "cpu":
        if coef.item() < 1.0:
            torch._foreach_mul_(grads, coef)
    else:
        torch._foreach_mul_(grads, coef.clamp(max=1.0))
    return norm
