"""Autograd for the sparse TopK step: only the selected latents are touched.

Decode, its backward and the encoder backward cost O(B * k * d), never O(B * n * d).
The arithmetic lives in ``sae.kernels`` (Triton on CUDA, torch elsewhere).

Shapes: B batch, k selected latents per sample, n latents, d embedding dimension.
"""

from __future__ import annotations

import torch

from sae.kernels import ops_for


class SparseDecode(torch.autograd.Function):
    """x_hat[b] = sum_j values[b, j] * W_dec[indices[b, j]]  ([B, d], no bias)."""

    @staticmethod
    def forward(ctx, values_BK, indices_BK, W_dec_ND):
        ctx.save_for_backward(values_BK, indices_BK, W_dec_ND)
        return ops_for(W_dec_ND).gather_weighted_sum(indices_BK, values_BK, W_dec_ND)

    @staticmethod
    def backward(ctx, grad_BD):
        values_BK, indices_BK, W_dec_ND = ctx.saved_tensors
        ops = ops_for(W_dec_ND)
        grad_BD = grad_BD.contiguous()
        d_values = d_W = None
        if ctx.needs_input_grad[0]:
            d_values = ops.gather_dot(indices_BK, W_dec_ND, grad_BD).to(values_BK.dtype)
        if ctx.needs_input_grad[2]:
            d_W, _ = ops.segment_sum(indices_BK, values_BK, grad_BD, W_dec_ND.shape[0])
            d_W = d_W.to(W_dec_ND.dtype)
        return d_values, None, d_W


class SelectedEncode(torch.autograd.Function):
    """Differentiable values of the selected pre-activations.

    Forward returns ``values_BK`` unchanged (they were computed from the dense
    ``z_pre = (x - b_pre) @ W_enc^T + b_lat`` when choosing the top k). Backward sends
    the gradient to the selected entries only:
    dW_enc[i] += g * (x - b_pre),  db_lat[i] += g,  dx += g * W_enc[i].
    The pre-bias gets -sum_i db_lat[i] W_enc[i], an [n] x [n, d] product: summing the
    per-sample dx instead would gather B * k rows of W_enc again, which measured as
    one of the largest costs of a step on a GPU. dx itself is only computed when x
    requires a gradient (never in training: x is data).
    """

    @staticmethod
    def forward(ctx, x_BD, b_pre_D, W_enc_ND, b_lat_N, indices_BK, values_BK):
        ctx.save_for_backward(x_BD, b_pre_D, W_enc_ND, indices_BK)
        return values_BK.view_as(values_BK)

    @staticmethod
    def backward(ctx, grad_BK):
        x_BD, b_pre_D, W_enc_ND, indices_BK = ctx.saved_tensors
        ops = ops_for(W_enc_ND)
        grad_BK = grad_BK.contiguous()
        need_x, need_pre, need_W, need_b = ctx.needs_input_grad[:4]
        d_x = d_pre = d_W = d_b = None
        if need_x:
            d_x = ops.gather_weighted_sum(indices_BK, grad_BK, W_enc_ND).to(x_BD.dtype)
        if need_W or need_b or need_pre:
            x_c_BD = (x_BD - b_pre_D).detach()
            d_W, d_b = ops.segment_sum(
                indices_BK, grad_BK, x_c_BD, W_enc_ND.shape[0], with_weight_sum=True
            )
            if need_pre:
                d_pre = -(d_b @ W_enc_ND.float()).to(b_pre_D.dtype)
            d_W = d_W.to(W_enc_ND.dtype) if need_W else None
            d_b = d_b.to(W_enc_ND.dtype) if need_b else None
        return d_x, d_pre, d_W, d_b, None, None


def sparse_decode(values_BK: torch.Tensor, indices_BK: torch.Tensor, W_dec_ND: torch.Tensor):
    return SparseDecode.apply(values_BK, indices_BK, W_dec_ND)


def selected_encode(x_BD, b_pre_D, W_enc_ND, b_lat_N, indices_BK, values_BK):
    return SelectedEncode.apply(x_BD, b_pre_D, W_enc_ND, b_lat_N, indices_BK, values_BK)
