"""Sparse TopK compute in plain torch: the fallback that the Triton kernels replace.

Everything after the encoder matmul touches only the selected latents, so decode,
its backward and the encoder backward cost O(B * k * d), never O(B * n * d).

Shapes: B batch, k selected latents per sample, n latents, d embedding dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_sum_rows(
    indices_BK: torch.Tensor, weights_BK: torch.Tensor, rows_BD: torch.Tensor, n: int
) -> torch.Tensor:
    """out[i] = sum over (b, j) with indices[b, j] == i of weights[b, j] * rows[b]; [n, d].

    This is S^T @ rows for the sparse [B, n] matrix S holding the selected values.
    Sorting the B*k indices by latent turns it into n bags that ``embedding_bag`` sums
    in one pass, without a [B*k, d] intermediate or atomics.
    """
    k = indices_BK.shape[1]
    flat = indices_BK.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sample_of_entry = torch.div(order, k, rounding_mode="floor")
    counts_N = torch.bincount(flat, minlength=n)
    offsets_N = torch.zeros(n, dtype=torch.long, device=flat.device)
    offsets_N[1:] = counts_N.cumsum(0)[:-1]
    return F.embedding_bag(
        sample_of_entry,
        rows_BD,
        offsets_N,
        mode="sum",
        per_sample_weights=weights_BK.reshape(-1)[order].to(rows_BD.dtype),
    )


def gather_dot(
    indices_BK: torch.Tensor, table_ND: torch.Tensor, vec_BD: torch.Tensor
) -> torch.Tensor:
    """out[b, j] = <vec[b], table[indices[b, j]]>; [B, k].

    Reuses ``embedding_bag``'s per-sample-weight gradient, which computes exactly these
    dot products without materialising the [B, k, d] gathered rows.
    """
    with torch.enable_grad():
        probe_BK = torch.zeros(
            indices_BK.shape, dtype=table_ND.dtype, device=table_ND.device, requires_grad=True
        )
        out_BD = F.embedding_bag(
            indices_BK, table_ND.detach(), mode="sum", per_sample_weights=probe_BK
        )
        (grad_BK,) = torch.autograd.grad(out_BD, probe_BK, vec_BD.to(out_BD.dtype))
    return grad_BK


class SparseDecode(torch.autograd.Function):
    """x_hat[b] = sum_j values[b, j] * W_dec[indices[b, j]]  ([B, d], no bias)."""

    @staticmethod
    def forward(ctx, values_BK, indices_BK, W_dec_ND):
        ctx.save_for_backward(values_BK, indices_BK, W_dec_ND)
        return F.embedding_bag(
            indices_BK, W_dec_ND, mode="sum", per_sample_weights=values_BK.to(W_dec_ND.dtype)
        )

    @staticmethod
    def backward(ctx, grad_BD):
        values_BK, indices_BK, W_dec_ND = ctx.saved_tensors
        grad_BD = grad_BD.contiguous()
        d_values = d_W = None
        if ctx.needs_input_grad[0]:
            d_values = gather_dot(indices_BK, W_dec_ND, grad_BD).to(values_BK.dtype)
        if ctx.needs_input_grad[2]:
            d_W = segment_sum_rows(indices_BK, values_BK, grad_BD, W_dec_ND.shape[0])
        return d_values, None, d_W


class SelectedEncode(torch.autograd.Function):
    """Differentiable values of the selected pre-activations.

    Forward returns ``values_BK`` unchanged (they were computed from the dense
    ``z_pre = x_c @ W_enc^T + b_lat`` when choosing the top k). Backward sends the
    gradient to the selected entries only:
    dW_enc[i] += g * x_c,  db_lat[i] += g,  dx_c += g * W_enc[i].
    """

    @staticmethod
    def forward(ctx, x_c_BD, W_enc_ND, b_lat_N, indices_BK, values_BK):
        ctx.save_for_backward(x_c_BD, W_enc_ND, indices_BK)
        return values_BK.view_as(values_BK)

    @staticmethod
    def backward(ctx, grad_BK):
        x_c_BD, W_enc_ND, indices_BK = ctx.saved_tensors
        n = W_enc_ND.shape[0]
        grad_BK = grad_BK.contiguous()
        d_x = d_W = d_b = None
        if ctx.needs_input_grad[0]:
            d_x = F.embedding_bag(
                indices_BK, W_enc_ND, mode="sum", per_sample_weights=grad_BK.to(W_enc_ND.dtype)
            ).to(x_c_BD.dtype)
        if ctx.needs_input_grad[1]:
            d_W = segment_sum_rows(indices_BK, grad_BK, x_c_BD, n).to(W_enc_ND.dtype)
        if ctx.needs_input_grad[2]:
            d_b = torch.zeros(n, dtype=grad_BK.dtype, device=grad_BK.device)
            d_b.index_add_(0, indices_BK.reshape(-1), grad_BK.reshape(-1))
        return d_x, d_W, d_b, None, None


def sparse_decode(values_BK: torch.Tensor, indices_BK: torch.Tensor, W_dec_ND: torch.Tensor):
    return SparseDecode.apply(values_BK, indices_BK, W_dec_ND)


def selected_encode(x_c_BD, W_enc_ND, b_lat_N, indices_BK, values_BK):
    return SelectedEncode.apply(x_c_BD, W_enc_ND, b_lat_N, indices_BK, values_BK)
