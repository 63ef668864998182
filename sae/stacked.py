"""C cells of one dictionary size trained as one problem: a step whose launches do not grow with C.

A pack steps each cell in turn: ~30 small kernels and one host sync (AuxK's ``nonzero``)
per cell-step, so on a GPU a small-d grid is bound by launches, not by work. Here the
cells' parameters are stacked (``W_enc``/``W_dec`` [C, n, d], ``b_lat`` [C, n],
``b_pre`` [C, d]) and each stage of the step runs once for the stack:

- encoder: one [B, d] x [d, C*n] matmul on CUDA (the batch read once, as
  :class:`sae.pack.PackEncoder` does); on CPU one matmul per cell, where the [B, C*n]
  output would not stay in cache;
- selection: one top-k at the stack's largest k, each cell's code masked by rank
  (slot j counts for cell c iff j < k_c), so cells of different k share it;
- AuxK: a top-k over the pre-activations with the live latents at -inf, kept by rank
  and deadness, the loss gated by a "has dead" tensor: no ``nonzero``, no ``.item()``,
  no shape that depends on data, so the step can be captured in a CUDA graph;
- decode and the sparse backward through ``sae.sparse``'s kernels, the stack's rows
  offset into one [C*n, d] table;
- one fused Adam over the four stacked tensors (equal to per-cell Adam: it is
  elementwise, the hyper-parameters are shared); decoder projection, clipping and
  renormalisation per cell, as ``sae.trainer.constrained_step`` does them.

Masked slots carry value 0 and get no gradient, so they add exact zeros: where the
operations are the same as the per-cell path the results are bit for bit the same.
What a stack holds: cells of equal (d, n, arch, selection, prefixes); k, k_aux,
aux_coef, multi_topk and the dead threshold may differ. :func:`stack_groups` splits a
pack into such stacks. A stack splits back into per-cell ``TopKSAE`` and Adam state
dicts (:meth:`StackedSAE.cell_state_dict`, :func:`cell_optimizer_state`), so
checkpoints keep their format. :class:`sae.trainer.PackTrainer` steps a pack this way
when ``TrainConfig.stacked`` is in force (one stack per group of >= 2 active cells).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from sae.config import SAEConfig
from sae.kernels import ops_for
from sae.model import TopKSAE, affine
from sae.sparse import sparse_decode

_PARAMS = ("W_dec", "W_enc", "b_lat", "b_pre")
"""TopKSAE.parameters() order, which its Adam state dict numbers 0..3."""


class StackedOutput(NamedTuple):
    """One forward pass of a stack; per-cell losses are [C]."""

    loss: torch.Tensor
    nmse: torch.Tensor
    auxk_loss: torch.Tensor
    multi_topk_nmse: torch.Tensor
    values: torch.Tensor
    """[C, B, W] code values after ReLU, W the stack's widest code; a cell's slots past
    its own width (and BatchTopK's unkept slots) hold 0."""
    indices: torch.Tensor
    """[C, B, W] latent ids of ``values`` (a zero slot's id means nothing)."""
    fired: torch.Tensor
    """[C, B, W] bool: the slots that reset the dead-latent counter."""
    prefix_nmse: torch.Tensor | None = None
    """[C, L] Matryoshka prefixes' NMSE (the last is ``nmse``); None for other archs."""


def stack_key(cfg: SAEConfig) -> tuple:
    """What cells of one stack must share."""
    return (cfg.d_in, cfg.n_latents, cfg.arch, cfg.selection, cfg.prefixes)


def stack_groups(cfgs: Sequence[SAEConfig]) -> list[list[int]]:
    """Indices of ``cfgs`` grouped into stacks (first-seen order), e.g. a grid's 20
    cells into one stack per n; mixed archs into separate stacks."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(stack_key(cfg), []).append(i)
    return list(groups.values())


class StackedSAE(nn.Module):
    """The parameters and buffers of C TopK SAEs of equal n, stacked on a leading axis.

    ``one_matmul``: the encoder as one matmul over the stack (None: on CUDA only).
    Always in training mode (BatchTopK selects over the batch).
    """

    def __init__(self, models: Sequence[TopKSAE], one_matmul: bool | None = None):
        super().__init__()
        if not models:
            raise ValueError("a stack needs at least one model")
        keys = {stack_key(m.cfg) for m in models}
        if len(keys) != 1:
            raise ValueError(
                "cells of one stack must share (d_in, n_latents, arch, selection, prefixes); "
                f"got {sorted(keys, key=str)}: split them with stack_groups"
            )
        self.cfgs = [m.cfg for m in models]
        cfg0 = self.cfgs[0]
        self.C, self.n, self.d = len(models), cfg0.n_latents, cfg0.d_in
        self.batchtopk = cfg0.selection == "batchtopk"
        self.prefixes = cfg0.prefixes if cfg0.arch == "matryoshka" else None
        device = models[0].W_dec.device
        self.one_matmul = device.type == "cuda" if one_matmul is None else one_matmul
        for name in _PARAMS:
            stacked = torch.stack([getattr(m, name).detach() for m in models])
            setattr(self, name, nn.Parameter(stacked.clone()))
        self.register_buffer(
            "samples_since_fired", torch.stack([m.samples_since_fired for m in models]).clone()
        )
        if self.batchtopk:
            self.register_buffer("threshold", torch.stack([m.threshold for m in models]).clone())
            self.register_buffer(
                "threshold_weight", torch.stack([m.threshold_weight for m in models]).clone()
            )
        self._static_settings(device)

    def _static_settings(self, device: torch.device) -> None:
        cfgs = self.cfgs

        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)

        # Widths of the one top-k: code slots, Multi-TopK's 4k, BatchTopK's row width.
        self.K = max(c.code_width for c in cfgs)
        self.W = self.K if self.batchtopk else max(c.k for c in cfgs)
        self.k_C11 = col([c.k for c in cfgs], torch.long)
        self.k_encode_C11 = col([c.k_encode for c in cfgs], torch.long)
        self.width_C11 = col([c.code_width for c in cfgs], torch.long)
        self.multi_C = col([c.multi_topk for c in cfgs], torch.bool).view(-1)
        self.any_multi = any(c.multi_topk for c in cfgs)
        self.aux_coef_C = torch.tensor([c.aux_coef for c in cfgs], device=device)
        self.K_aux = max((c.effective_k_aux for c in cfgs if c.aux_coef > 0), default=0)
        self.k_aux_C11 = col([c.effective_k_aux for c in cfgs], torch.long)
        self.dead_threshold_C1 = col([c.dead_threshold for c in cfgs], torch.long).view(-1, 1)
        self.offset_C11 = col([c * self.n for c in range(self.C)], torch.long)
        if self.prefixes is not None:
            self.prefix_L = list(self.prefixes[:-1])

    # ------------------------------------------------------------------ state
    def cell_state_dict(self, c: int) -> dict[str, torch.Tensor]:
        """Cell ``c``'s state in ``TopKSAE.state_dict()``'s format (copies)."""
        names = [*_PARAMS, "samples_since_fired"]
        names += ["threshold", "threshold_weight"] if self.batchtopk else []
        return {name: getattr(self, name)[c].detach().clone() for name in names}

    def to_models(self) -> list[TopKSAE]:
        """The cells as TopKSAE models (for evaluation, export, checkpoints)."""
        models = []
        for c, cfg in enumerate(self.cfgs):
            model = TopKSAE(cfg).to(self.W_dec.device)
            model.load_state_dict(self.cell_state_dict(c))
            models.append(model)
        return models

    def dead_mask(self) -> torch.Tensor:
        """[C, n] bool: latents that have not fired for their cell's threshold."""
        return self.samples_since_fired > self.dead_threshold_C1

    # ---------------------------------------------------------------- forward
    def forward(self, x_BD: torch.Tensor, compute_dtype: torch.dtype | None = None):
        """Losses of every cell on batch ``x_BD`` (the per-cell ``TopKSAE.forward`` in
        training mode, with each cell's own dead mask)."""
        if x_BD.ndim != 2 or x_BD.shape[1] != self.d:
            raise ValueError(
                f"input has shape {tuple(x_BD.shape)}, expected [batch, d_in={self.d}]"
            )
        dead_CN = self.dead_mask()
        top_v, top_i, aux_v, aux_i = self._select(x_BD, dead_CN, compute_dtype)
        rank_K = torch.arange(self.K, device=x_BD.device)
        code_mask = self._batch_keep(top_v) if self.batchtopk else rank_K < self.k_C11
        sel_i = top_i if aux_i is None else torch.cat([top_i, aux_i], dim=2)
        sel_v = top_v if aux_v is None else torch.cat([top_v, aux_v], dim=2)
        sel_v = torch.relu(
            StackedSelectedEncode.apply(x_BD, self.b_pre, self.W_enc, self.b_lat, sel_i, sel_v)
        )
        W = self.W
        values = sel_v[:, :, :W].masked_fill(~code_mask[..., :W], 0.0)
        indices = sel_i[:, :, :W]
        x_hat_CBD = self._decode(values, indices) + self.b_pre.unsqueeze(1)
        total = _centred_sum_sq(x_BD.float().unsqueeze(0))
        nmse_C = _err_sum_sq(x_hat_CBD, x_BD) / total
        zero_C = torch.zeros_like(nmse_C)

        recon_C, prefix_nmse = nmse_C, None
        if self.prefixes is not None:
            errs = [self._err(values.masked_fill(indices >= m, 0.0), indices, x_BD) / total
                    for m in self.prefix_L]  # fmt: skip
            prefix_nmse = torch.stack([*errs, nmse_C], dim=1)
            recon_C = prefix_nmse.mean(dim=1)

        multi_C = zero_C
        if self.any_multi:
            v4 = sel_v[:, :, : self.K].masked_fill(~(rank_K < self.k_encode_C11), 0.0)
            e4 = self._err(v4, sel_i[:, :, : self.K], x_BD)
            multi_C = torch.where(self.multi_C, e4 / total, zero_C)

        auxk_C = zero_C
        if aux_i is not None:
            auxk_C = self._auxk(x_BD, x_hat_CBD, dead_CN, sel_v, sel_i)

        loss_C = recon_C + self.aux_coef_C * auxk_C + multi_C / 8.0
        fired = (values > 0) if self.batchtopk else code_mask[..., :W].expand_as(values)
        return StackedOutput(loss_C, nmse_C, auxk_C, multi_C, values, indices, fired, prefix_nmse)

    def _select(self, x_BD, dead_CN, compute_dtype):
        """Top-K pre-activations and ids [C, B, K] of every cell; with AuxK on, also the
        top-K_aux among each cell's dead latents [C, B, K_aux] (value 0 where a slot
        found none, lies past the cell's k_aux or the cell's aux_coef is 0)."""
        with torch.no_grad():
            # z = x @ W_enc^T + (b_lat - W_enc b_pre), as PackEncoder folds each b_pre.
            if self.one_matmul:
                bias_CN = self.b_lat - (self.W_enc @ self.b_pre.unsqueeze(2)).squeeze(2)
                z_BCN = affine(
                    x_BD, self.W_enc.view(-1, self.d), bias_CN.reshape(-1), compute_dtype
                ).view(-1, self.C, self.n)
                picks = [_pick(z_BCN, dead_CN, self.K, self.K_aux)]
                # [B, C, *] -> [C, B, *]
                picks = [tuple(t.transpose(0, 1).contiguous() for t in picks[0])]
            else:
                # One [B, n] matrix alive at a time, as PackEncoder on CPU.
                picks = [
                    _pick(affine(x_BD, W_ND, b_N - W_ND @ b_D, compute_dtype),
                          dead_N, self.K, self.K_aux)
                    for W_ND, b_N, b_D, dead_N in zip(
                        self.W_enc, self.b_lat, self.b_pre, dead_CN, strict=True
                    )
                ]  # fmt: skip
        if self.one_matmul:
            top_v, top_i, aux_v, aux_i = picks[0]
        else:
            top_v, top_i, aux_v, aux_i = (
                None if t[0] is None else torch.stack(t) for t in zip(*picks, strict=True)
            )
        if not self.K_aux:
            return top_v, top_i, None, None
        aux_ok = (torch.arange(self.K_aux, device=x_BD.device) < self.k_aux_C11) & (
            dead_CN.gather(1, aux_i.view(self.C, -1)).view_as(aux_i)
        )
        aux_ok &= (self.aux_coef_C > 0).view(-1, 1, 1)
        # A zero pre-activation leaves the slot out of the decode and, through the ReLU,
        # out of the gradient.
        aux_v = torch.where(aux_ok, aux_v, torch.zeros((), device=aux_v.device))
        return top_v, top_i, aux_v, aux_i

    def _batch_keep(self, top_v_CBK: torch.Tensor) -> torch.Tensor:
        """BatchTopK's kept slots [C, B, K]: each cell's top k*B of relu(z_pre) over its
        rows' top ``code_width`` (slots past a cell's width never count)."""
        C, B, K = top_v_CBK.shape
        in_row = torch.arange(K, device=top_v_CBK.device) < self.width_C11
        # -1 ranks below every relu'd value, so a slot past a width is never kept.
        flat_CX = top_v_CBK.clamp_min(0.0).masked_fill(~in_row, -1.0).view(C, -1)
        kB_max = max(c.k for c in self.cfgs) * B
        mixed = len({c.k for c in self.cfgs}) > 1  # ranks matter only for mixed k
        kept_CX = flat_CX.topk(kB_max, dim=1, sorted=mixed).indices
        rank_ok = torch.arange(kB_max, device=flat_CX.device) < self.k_C11.view(-1, 1) * B
        keep = torch.zeros_like(flat_CX, dtype=torch.bool).scatter_(1, kept_CX, rank_ok)
        return keep.view(C, B, K)

    def _decode(self, values_CBK: torch.Tensor, indices_CBK: torch.Tensor) -> torch.Tensor:
        """[C, B, d] sum_j v W_dec[c, i] (no bias): one decode over a [C*n, d] table."""
        C, B, K = values_CBK.shape
        flat_i = (indices_CBK + self.offset_C11).view(C * B, K)
        out = sparse_decode(values_CBK.reshape(C * B, K), flat_i, self.W_dec.view(-1, self.d))
        return out.view(C, B, self.d)

    def _err(self, values_CBK, indices_CBK, x_BD) -> torch.Tensor:
        """[C] squared error of each cell's reconstruction from a code."""
        return _err_sum_sq(self._decode(values_CBK, indices_CBK) + self.b_pre.unsqueeze(1), x_BD)

    def _auxk(self, x_BD, x_hat_CBD, dead_CN, sel_v, sel_i) -> torch.Tensor:
        """Per-cell AuxK loss: NMSE of the residual's reconstruction from the dead
        latents, 0 for a cell with none dead (or AuxK off), with no host sync."""
        e_hat = self._decode(sel_v[:, :, self.K :], sel_i[:, :, self.K :])
        residual_CBD = x_BD.float() - x_hat_CBD.detach()
        auxk_C = torch.nan_to_num(
            _err_sum_sq(e_hat, residual_CBD) / _centred_sum_sq(residual_CBD), nan=0.0
        )
        has_aux_C = dead_CN.any(dim=1) & (self.aux_coef_C > 0)
        return torch.where(has_aux_C, auxk_C, torch.zeros_like(auxk_C))

    # ----------------------------------------------------------- constraints
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Per row of every cell: g -= (w . g) w (``TopKSAE.remove_parallel_decoder_grad``)."""
        g = self.W_dec.grad
        if g is not None:
            g.addcmul_(torch.linalg.vecdot(g, self.W_dec).unsqueeze(2), self.W_dec, value=-1.0)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Each cell's gradient norm over its four parameters clipped to ``max_norm``
        (``sae.trainer.clip_grad_norm`` per cell); [C] norms before clipping. No sync:
        a factor of 1 leaves an unclipped cell's gradients as they were."""
        grads = [getattr(self, name).grad for name in _PARAMS]
        norms = [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]
        norm_C = torch.linalg.vector_norm(torch.stack(norms), dim=0)
        coef_C = (max_norm / (norm_C + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef_C.view(-1, *[1] * (g.ndim - 1)))
        return norm_C

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=2, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def update_dead_counter(self, out: StackedOutput) -> None:
        """Reset the counter of each latent in one of its cell's ``fired`` slots; add B to
        the rest (``TopKSAE.update_dead_counter`` for every cell, no sync)."""
        flat_i = (out.indices + self.offset_C11).reshape(-1)
        hits = torch.zeros(self.C * self.n, device=flat_i.device)
        fired = hits.index_add_(0, flat_i, out.fired.reshape(-1).float()) > 0
        self.samples_since_fired.add_(out.indices.shape[1])
        self.samples_since_fired.masked_fill_(fired.view(self.C, self.n), 0)

    @torch.no_grad()
    def update_threshold(self, values_CBW: torch.Tensor) -> None:
        """BatchTopK: ``TopKSAE.update_threshold`` for every cell; a no-op otherwise."""
        if not self.batchtopk:
            return
        # 1 - decay taken in double first, as TopKSAE's Python float arithmetic does.
        decay, fresh = (
            torch.tensor(v, device=values_CBW.device)
            for v in zip(
                *[(c.threshold_decay, 1.0 - c.threshold_decay) for c in self.cfgs], strict=True
            )
        )
        low = values_CBW.masked_fill(values_CBW <= 0, torch.inf).flatten(1).min(dim=1).values
        w = self.threshold_weight
        sum_ = self.threshold.clamp_min(0.0) * w
        w_new = decay * w + fresh
        theta = (decay * sum_ + fresh * low) / w_new
        seen = torch.isfinite(low)
        self.threshold.copy_(torch.where(seen, theta, self.threshold))
        self.threshold_weight.copy_(torch.where(seen, w_new, w))


def _pick(z_XN: torch.Tensor, dead_N: torch.Tensor, K: int, K_aux: int):
    """(top-K values, ids, top-K_aux values and ids among the dead) along the last axis,
    largest first (ranks decide what each cell keeps). Aux is (None, None) if K_aux is 0."""
    top_v, top_i = z_XN.topk(K, dim=-1, sorted=True)
    if not K_aux:
        return top_v, top_i, None, None
    aux_v, aux_i = z_XN.masked_fill(~dead_N, -torch.inf).topk(K_aux, dim=-1, sorted=True)
    return top_v, top_i, aux_v, aux_i


def _err_sum_sq(x_hat_CBD: torch.Tensor, x_BD: torch.Tensor) -> torch.Tensor:
    """[C] sum((x_hat - x)^2) per cell; x [B, d] shared or [C, B, d]."""
    return (x_hat_CBD.float() - x_BD.float()).pow(2).flatten(1).sum(dim=1)


def _centred_sum_sq(x_CBD: torch.Tensor) -> torch.Tensor:
    """[C] sum((x - mean_over_batch(x))^2): ``sae.model.fvu``'s denominator."""
    return (x_CBD - x_CBD.mean(dim=1, keepdim=True)).pow(2).flatten(1).sum(dim=1)


class StackedSelectedEncode(torch.autograd.Function):
    """``sae.sparse.SelectedEncode`` for a stack: the gradient of the selected
    pre-activations [C, B, S] goes to the selected rows of each cell's W_enc and b_lat
    (one segment sum over the [C*n, d] table) and to each cell's b_pre."""

    @staticmethod
    def forward(ctx, x_BD, b_pre_CD, W_enc_CND, b_lat_CN, indices_CBS, values_CBS):
        ctx.save_for_backward(x_BD, b_pre_CD, W_enc_CND, indices_CBS)
        return values_CBS.view_as(values_CBS)

    @staticmethod
    def backward(ctx, grad_CBS):
        x_BD, b_pre_CD, W_enc_CND, indices_CBS = ctx.saved_tensors
        C, n, d = W_enc_CND.shape
        B, S = indices_CBS.shape[1:]
        ops = ops_for(W_enc_CND)
        offset = torch.arange(C, device=x_BD.device).view(-1, 1, 1) * n
        x_c_CBD = (x_BD.unsqueeze(0) - b_pre_CD.unsqueeze(1)).detach()
        d_W, d_b = ops.segment_sum(
            (indices_CBS + offset).view(C * B, S),
            grad_CBS.contiguous().view(C * B, S),
            x_c_CBD.view(C * B, d),
            C * n,
            with_weight_sum=True,
        )
        d_b_CN = d_b.view(C, n)
        d_pre = -(d_b_CN.unsqueeze(1) @ W_enc_CND.float()).squeeze(1).to(b_pre_CD.dtype)
        return (
            None,
            d_pre,
            d_W.view(C, n, d).to(W_enc_CND.dtype),
            d_b_CN.to(W_enc_CND.dtype),
            None,
            None,
        )


# ------------------------------------------------------------- optimisation
def make_optimizer(stack: StackedSAE, lr: float, betas, eps: float) -> torch.optim.Adam:
    """One fused Adam over the stack's four tensors, in TopKSAE's parameter order."""
    params = [getattr(stack, name) for name in _PARAMS]
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)


def stacked_step(
    stack: StackedSAE,
    opt: torch.optim.Optimizer,
    x_BD: torch.Tensor,
    grad_clip: float,
    compute_dtype: torch.dtype | None = None,
) -> StackedOutput:
    """One optimiser step of every cell (``PackTrainer._step`` for the stack; the caller
    steps the LR schedule)."""
    out = stack(x_BD, compute_dtype)
    out.loss.sum().backward()  # the cells' parameters are disjoint: each gets its own grad
    stack.remove_parallel_decoder_grad()
    if grad_clip > 0:
        stack.clip_grad_norm_(grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    stack.normalize_decoder()
    stack.update_dead_counter(out)
    stack.update_threshold(out.values)
    return out


def cell_optimizer_state(opt: torch.optim.Optimizer, c: int) -> dict:
    """Cell ``c``'s share of the stack's Adam state, as the state dict of an Adam over
    that cell's ``TopKSAE.parameters()`` (same hyper-parameters)."""
    sd = opt.state_dict()
    state = {
        i: {key: (v.clone() if key == "step" else v[c].clone()) for key, v in s.items()}
        for i, s in sd["state"].items()
    }
    return {"state": state, "param_groups": [dict(g) for g in sd["param_groups"]]}


def load_cell_optimizer_states(opt: torch.optim.Optimizer, states: Sequence[dict]) -> None:
    """Stack per-cell Adam state dicts (:func:`cell_optimizer_state`'s format) into ``opt``.

    Every cell must be at the same step: one stack has one step counter.
    """
    steps = {float(s["state"][0]["step"]) for s in states if s["state"]}
    if len(steps) > 1:
        raise ValueError(f"cells of one stack must be at the same Adam step, got {sorted(steps)}")
    if not steps:
        return
    if any(not s["state"] for s in states):
        raise ValueError("some cells of the stack have Adam state and others none")
    merged = {
        i: {
            key: (v if key == "step" else torch.stack([s["state"][i][key] for s in states]))
            for key, v in states[0]["state"][i].items()
        }
        for i in states[0]["state"]
    }
    opt.load_state_dict({"state": merged, "param_groups": states[0]["param_groups"]})
