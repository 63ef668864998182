"""Triton kernels for the sparse TopK ops (see ``sae.kernels`` for the op contracts).

All three read only the selected rows, accumulate in float32 whatever the input
dtype (fp32 or bf16), mask the tail of d (384, 768, 1536 are not powers of two),
and take any k. Indices may repeat within a sample. ``segment_sum`` sorts the
B*k entries by latent and gives each latent one program that sums its own
entries: deterministic (no atomics), so a resumed run replays bit for bit.

Under ``TRITON_INTERPRET=1`` they run on CPU tensors, slowly; the tests use that.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _load_rows(table_ptr, rows, j_mask, cols, col_mask, d):
    """table[rows, cols] as a float32 [BLOCK_K, BLOCK_D] tile, zero where masked."""
    return tl.load(
        table_ptr + rows[:, None] * d + cols[None, :],
        mask=j_mask[:, None] & col_mask[None, :],
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _gather_sum_kernel(
    idx_ptr, val_ptr, table_ptr, bias_ptr, out_ptr, k, d,
    HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # out[b, cols] = sum_j val[b, j] * table[idx[b, j], cols] (+ bias[cols])
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j0 in range(0, k, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        j_mask = js < k
        rows = tl.load(idx_ptr + b * k + js, mask=j_mask, other=0)
        vals = tl.load(val_ptr + b * k + js, mask=j_mask, other=0.0).to(tl.float32)
        tile = _load_rows(table_ptr, rows, j_mask, cols, col_mask, d)
        acc += tl.sum(vals[:, None] * tile, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * d + cols, acc, mask=col_mask)


@triton.jit
def _gather_dot_kernel(
    idx_ptr, table_ptr, vec_ptr, out_ptr, k, d,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # out[b, j] = <vec[b], table[idx[b, j]]>
    b = tl.program_id(0)
    js = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    j_mask = js < k
    rows = tl.load(idx_ptr + b * k + js, mask=j_mask, other=0)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for c0 in range(0, d, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D)
        col_mask = cols < d
        v = tl.load(vec_ptr + b * d + cols, mask=col_mask, other=0.0).to(tl.float32)
        tile = _load_rows(table_ptr, rows, j_mask, cols, col_mask, d)
        acc += tl.sum(tile * v[None, :], axis=1)
    tl.store(out_ptr + b * k + js, acc, mask=j_mask)


@triton.jit
def _segment_sum_kernel(
    order_ptr, offsets_ptr, w_ptr, rows_ptr, out_ptr, wsum_ptr, k, d,
    HAS_WSUM: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # out[i, cols] = sum over entries e of latent i: w[e] * rows[e // k, cols]
    # BLOCK_E entries at a time, so their row loads are in flight together (one entry
    # at a time left the kernel waiting on each load: 1.5 ms a call on an H200 at
    # d=1536, n=12288, B*k = 393k entries).
    i = tl.program_id(0)
    pd = tl.program_id(1)
    cols = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    start = tl.load(offsets_ptr + i)
    end = tl.load(offsets_ptr + i + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    wsum = tl.zeros([BLOCK_E], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        e_mask = es < end
        entry = tl.load(order_ptr + es, mask=e_mask, other=0)
        w = tl.load(w_ptr + entry, mask=e_mask, other=0.0).to(tl.float32)
        tile = tl.load(
            rows_ptr + (entry // k)[:, None] * d + cols[None, :],
            mask=e_mask[:, None] & col_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w[:, None] * tile, axis=0)
        wsum += w
    tl.store(out_ptr + i * d + cols, acc, mask=col_mask)
    if HAS_WSUM:  # noqa: SIM102 - a constexpr branch, then a runtime one
        if pd == 0:
            tl.store(wsum_ptr + i, tl.sum(wsum, axis=0))


# Launch shapes, chosen on an H200 by scripts/gpu_check.py's tune section (d=1536,
# n=12288, batch 4096): a program loads a [BLOCK_K (BLOCK_E) rows, BLOCK_D columns]
# tile at once. 32 x 128 beat 16 x 128 for the gathers by 12-20% although gather_dot
# then needs 168 registers a thread (3 programs an SM): these kernels wait on memory,
# and a larger tile keeps more loads in flight. `python -m sae.bench aot` prints the
# registers and spills of every shape chosen here.
BLOCK_K_MAX = 32
BLOCK_E = 16
BLOCK_D_MAX = 128
GATHER_WARPS = 4
SEGMENT_WARPS = 4


def _block(x: int, cap: int) -> int:
    return max(16, min(triton.next_power_of_2(max(x, 1)), cap))


def gather_weighted_sum(indices_BK, values_BK, table_ND, bias_D=None) -> torch.Tensor:
    B, k = indices_BK.shape
    d = table_ND.shape[1]
    out = torch.empty(B, d, dtype=torch.float32, device=table_ND.device)
    if B == 0:
        return out
    if k == 0:
        return out.copy_(bias_D.float().expand(B, d)) if bias_D is not None else out.zero_()
    BLOCK_D = _block(d, BLOCK_D_MAX)
    _gather_sum_kernel[(B, triton.cdiv(d, BLOCK_D))](
        indices_BK.contiguous(),
        values_BK.contiguous(),
        table_ND.contiguous(),
        bias_D if bias_D is not None else table_ND,
        out,
        k,
        d,
        HAS_BIAS=bias_D is not None,
        BLOCK_K=_block(k, BLOCK_K_MAX),
        BLOCK_D=BLOCK_D,
        num_warps=GATHER_WARPS,
    )
    return out


def gather_dot(indices_BK, table_ND, vec_BD) -> torch.Tensor:
    B, k = indices_BK.shape
    d = table_ND.shape[1]
    out = torch.empty(B, k, dtype=torch.float32, device=table_ND.device)
    if B == 0 or k == 0:
        return out
    BLOCK_K = _block(k, BLOCK_K_MAX)
    _gather_dot_kernel[(B, triton.cdiv(k, BLOCK_K))](
        indices_BK.contiguous(),
        table_ND.contiguous(),
        vec_BD.contiguous(),
        out,
        k,
        d,
        BLOCK_K=BLOCK_K,
        BLOCK_D=_block(d, BLOCK_D_MAX),
        num_warps=GATHER_WARPS,
    )
    return out


def segment_sum(indices_BK, weights_BK, rows_BD, n: int, with_weight_sum: bool = False):
    B, k = indices_BK.shape
    d = rows_BD.shape[1]
    device = rows_BD.device
    out = torch.zeros(n, d, dtype=torch.float32, device=device)
    wsum = torch.zeros(n, dtype=torch.float32, device=device) if with_weight_sum else None
    if B == 0 or k == 0 or n == 0:
        return out, wsum
    flat = indices_BK.reshape(-1)
    order = torch.argsort(flat, stable=True)
    offsets = torch.zeros(n + 1, dtype=torch.long, device=device)
    # index_add rather than bincount: bincount reads max(flat) back to the host on CUDA.
    counts = torch.zeros(n, dtype=torch.long, device=device).index_add_(
        0, flat, torch.ones_like(flat)
    )
    offsets[1:] = torch.cumsum(counts, 0)
    BLOCK_D = _block(d, BLOCK_D_MAX)
    _segment_sum_kernel[(n, triton.cdiv(d, BLOCK_D))](
        order,
        offsets,
        weights_BK.contiguous(),
        rows_BD.contiguous(),
        out,
        wsum if wsum is not None else out,
        k,
        d,
        HAS_WSUM=with_weight_sum,
        BLOCK_E=BLOCK_E,
        BLOCK_D=BLOCK_D,
        num_warps=SEGMENT_WARPS,
    )
    return out, wsum
