"""Held-out metrics, named as they appear in MLflow and the results tables.

:func:`evaluate` gives back the scalar :class:`EvalMetrics` and the per-latent
densities they summarise (an :class:`Evaluation`).

log_feature_density: density_i = fraction of eval samples whose code holds latent i;
the metric is the mean of log10(density_i) over latents that fired at least once on the
split (log10(0) is -inf). Its ceiling is log10(k / n), reached when every latent fires
equally often.

dead_fraction is the paper's: the share of latents the training rule counts as dead at
the end (not fired for ``cfg.dead_threshold`` training samples), not the share that
never fired on the split: a small split cannot touch every latent (106 abstracts x 16
activations never reach 3,072 latents), which says nothing about the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

from sae.data import as_rows, row_chunks
from sae.importance import pruned_nmse


@dataclass(frozen=True)
class EvalMetrics:
    nmse: float
    """Centred NMSE over the whole split: sum sq. error / sum sq. deviation from its mean."""
    log_feature_density: float
    """Mean log10 density over latents that fired (see module doc)."""
    act_mean: float
    """Mean of the nonzero top-k activation values."""
    dead_fraction: float
    """Share of latents dead by the training rule (the model's counter, or the mask given)."""
    l0: float
    """Mean number of nonzero activations per sample (at most k for TopK; BatchTopK's
    varies per sample, at most ``cfg.code_width``)."""
    auxk_loss: float
    """AuxK loss over the split, using the training dead mask (0 when none are dead)."""
    n_samples: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in fields(EvalMetrics) if f.name != "n_samples")
"""The metrics' names in :class:`EvalMetrics`' order (``n_samples`` is a count, not one)."""


class Evaluation(NamedTuple):
    """What :func:`evaluate` gives back."""

    metrics: EvalMetrics
    density: np.ndarray
    """[n] float64: the share of samples whose code holds latent i. TopK: latents
    picked with a value the ReLU zeroed count too, so the entries sum to k. BatchTopK:
    only nonzero values (a row's padding slots are not latents it selected)."""


@torch.no_grad()
def evaluate(
    model,
    x_ND,
    batch_size: int = 4096,
    dead_mask_N: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Evaluation:
    """Metrics and per-latent densities of ``model`` on ``x_ND`` [N, d_in] (a tensor, a
    numpy array or memmap, or :class:`sae.data.MappedRows`), read ``batch_size`` rows at a
    time and moved to the model's device per batch: it holds [batch_size, d + n] values,
    whatever N.

    ``batch_size`` is part of the result, not only of its cost: ``auxk_loss`` is the mean
    of the batches' AuxK losses (the trainer evaluates at max(batch, 1024) rows).

    Sums are accumulated on the device in float64 and read back once at the end.
    The model runs in ``eval()`` mode (BatchTopK selects by its threshold, as at
    inference), then goes back to the mode it was in.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    x_ND = as_rows(x_ND)
    N = x_ND.shape[0] if x_ND.ndim else 0
    if N == 0:
        raise ValueError(
            f"cannot evaluate on an empty split: need a non-empty [N, d_in] input, "
            f"got shape {tuple(x_ND.shape)}"
        )
    device = model.b_pre.device
    n = model.n_latents
    dead = model.dead_mask() if dead_mask_N is None else dead_mask_N
    sq_err = torch.zeros((), dtype=torch.float64, device=device)
    sum_x = torch.zeros(model.d_in, dtype=torch.float64, device=device)
    sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
    fires_N = torch.zeros(n, dtype=torch.long, device=device)
    act_sum = torch.zeros((), dtype=torch.float64, device=device)
    nonzero = torch.zeros((), dtype=torch.long, device=device)
    aux_sum = torch.zeros((), dtype=torch.float64, device=device)
    aux_batches = 0
    padded = model.cfg.selection == "batchtopk"
    was_training = model.training
    model.eval()
    try:
        for piece in row_chunks(x_ND, batch_size):
            x = piece.to(device=device, dtype=torch.float32)
            out = model(x, dead_mask_N=dead, compute_dtype=compute_dtype)
            xd = x.double()
            sq_err += (out.x_hat.double() - xd).pow(2).sum()
            sum_x += xd.sum(dim=0)
            sum_x2 += xd.pow(2).sum()
            if padded:
                fired = (out.values > 0).reshape(-1).long()
                fires_N.index_add_(0, out.indices.reshape(-1), fired)
            else:
                fires_N += torch.bincount(out.indices.reshape(-1), minlength=n)
            active = out.values > 0
            act_sum += out.values.double().sum()
            nonzero += active.sum()
            # A batch of one has no variance: its AuxK loss is undefined, so it is skipped.
            if x.shape[0] > 1:
                aux_sum += out.auxk_loss.double()
                aux_batches += 1
    finally:
        model.train(was_training)
    total = sum_x2 - sum_x.pow(2).sum() / N
    nmse = (sq_err / total.clamp_min(1e-30)).item()
    density = fires_N.double() / N
    alive = density > 0
    n_alive = int(alive.sum().item())
    log_fd = density[alive].log10().mean().item() if n_alive else -math.inf
    n_nonzero = int(nonzero.item())
    metrics = EvalMetrics(
        nmse=nmse,
        log_feature_density=log_fd,
        act_mean=(act_sum / max(n_nonzero, 1)).item(),
        dead_fraction=dead.float().mean().item(),
        l0=n_nonzero / N,
        auxk_loss=(aux_sum / max(aux_batches, 1)).item(),
        n_samples=N,
    )
    return Evaluation(metrics, density.cpu().numpy())


class PrefixMetrics(NamedTuple):
    """One prefix of a dictionary used as an SAE of its own (a Matryoshka SAE's use)."""

    n_latents: int
    """m: the prefix keeps latents 0 .. m-1."""
    nmse: float
    """Held-out NMSE with the encoder choosing among the first m latents only (TopK: each
    sample's top k of them; BatchTopK: those above the threshold), as a dedicated SAE
    of m latents would."""
    dead_fraction: float
    """Share of the first m latents dead by the training rule."""


@torch.no_grad()
def prefix_metrics(model, x_ND, prefixes, batch_size: int = 4096) -> list[PrefixMetrics]:
    """:class:`PrefixMetrics` of ``model`` cut to each m of ``prefixes`` on ``x_ND`` [N, d]
    (as :func:`evaluate` reads it, ``batch_size`` rows at a time).

    The pre-activations of latents >= m are set to -inf, so the model's own inference
    selection (:meth:`TopKSAE.encode`) picks among the rest. For BatchTopK this equals
    masking the whole model's code (a threshold treats each latent alone); for TopK the
    freed slots go to the next latents below m, so it differs from the training loss's
    masked reconstruction, and is what the prefix gives on its own.
    """
    x_ND = as_rows(x_ND)
    N, n = x_ND.shape[0], model.n_latents
    sizes = sorted({int(m) for m in prefixes})
    if not sizes or sizes[0] < 1 or sizes[-1] > n:
        raise ValueError(f"prefixes must lie in [1, {n}], got {list(prefixes)}")
    if N == 0:
        raise ValueError("cannot evaluate prefixes on an empty split")
    # A prefix is the dictionary pruned to its first m latents in index order.
    pruned = pruned_nmse(model, x_ND, np.arange(n), sizes, batch_size=batch_size)
    nmse = [pruned[m] for m in sizes]
    dead = model.dead_mask()
    return [
        PrefixMetrics(m, e, dead[:m].float().mean().item())
        for m, e in zip(sizes, nmse, strict=True)
    ]


__all__ = [
    "METRIC_NAMES",
    "EvalMetrics",
    "Evaluation",
    "PrefixMetrics",
    "evaluate",
    "prefix_metrics",
]
