"""One optimiser step of a TopK SAE, with its decoder-norm constraint and gradient clipping."""

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


def constrained_step(model, opt: torch.optim.Optimizer, grad_clip: float) -> None:
    """After ``backward``: project the decoder grads, clip, step, clear grads, renormalise.

    Keeps the decoder rows on the unit sphere (SAE_RECIPE.md); ``grad_clip`` 0 skips clipping.
    """
    model.remove_parallel_decoder_grad()
    if grad_clip > 0:
        clip_grad_norm(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.normalize_decoder()
