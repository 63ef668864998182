"""Sparse-op kernels: Triton vs the torch fallback vs a dense implementation.

    python -m sae.bench kernels [--d 1536 --n 3072,12288 --k 16,128 --batch 4096]

Two composites per row, each built from the three ops of ``sae.kernels``:
  decode fwd+bwd   out = sum_j v W_dec[I];  dv = <g, W_dec[I]>;  dW_dec = segment sum
  encoder bwd      dW_enc, db_lat = segment sums;  dx = sum_j g W_enc[I]
GB/s counts the least traffic the op needs (selected rows read, outputs written
once); "% peak" divides by the device's memory bandwidth where it is known.
On a machine without CUDA the Triton column is skipped (the interpreter is not a
speed measurement) and the defaults shrink to d=384, batch 1024.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from sae.bench.timing import device_name, median_seconds, peak_bandwidth
from sae.kernels import torch_ops


def _decode_fwd_bwd(ops, idx, v, W, g, n) -> Callable[[], object]:
    def run():
        ops.gather_weighted_sum(idx, v, W)
        ops.gather_dot(idx, W, g)
        ops.segment_sum(idx, v, g, n)

    return run


def _encoder_bwd(ops, idx, g_sel, W, x_c, n) -> Callable[[], object]:
    def run():
        ops.segment_sum(idx, g_sel, x_c, n, with_weight_sum=True)
        ops.gather_weighted_sum(idx, g_sel, W)

    return run


def _dense_decode(idx, v, W, g, n):
    def run():
        codes = torch.zeros(idx.shape[0], n, device=W.device, dtype=W.dtype).scatter_(1, idx, v)
        codes @ W
        (g.to(W.dtype) @ W.T).gather(1, idx)
        codes.T @ g.to(W.dtype)

    return run


def _dense_encoder(idx, g_sel, W, x_c, n):
    def run():
        G = torch.zeros(idx.shape[0], n, device=W.device, dtype=W.dtype).scatter_(1, idx, g_sel)
        G.T @ x_c
        G.sum(0)
        G @ W

    return run


def _bytes(B, k, n, d, elt, what):
    if what == "decode":
        return 2 * B * k * d * elt + B * k * d * 4 + n * d * 4 + 2 * B * d * 4 + B * k * 12
    return B * k * d * (4 + elt) + n * d * 4 + n * 4 + B * d * 4 + B * k * 12


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=1536 if cuda else 384)
    p.add_argument("--n", default="3072,12288")
    p.add_argument("--k", default="16,128")
    p.add_argument("--batch", type=int, default=4096 if cuda else 1024)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    impls = [("torch", torch_ops)]
    if cuda:
        from sae.kernels import triton_ops

        impls.insert(0, ("triton", triton_ops))
    peak = peak_bandwidth(device)
    print(f"sparse kernels on {device_name(device)}, d={a.d}, batch={a.batch}, median of {a.steps}")
    head = f"{'op':<16}{'dtype':<10}{'n':>6}{'k':>5}  {'impl':<7}{'ms':>9}{'GB/s':>9}"
    print(head + (f"{'% peak':>8}" if peak else "") + f"{'x dense':>9}")
    g = torch.Generator(device=device).manual_seed(0)
    for dtype_name in a.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        elt = torch.finfo(dtype).bits // 8
        for n in (int(v) for v in a.n.split(",")):
            W = torch.randn(n, a.d, device=device, generator=g).to(dtype)
            for k in (int(v) for v in a.k.split(",")):
                B, d = a.batch, a.d
                idx = torch.randint(0, n, (B, k), device=device, generator=g)
                v = torch.rand(B, k, device=device, generator=g).to(dtype)
                grad = torch.randn(B, d, device=device, generator=g)
                x_c = torch.randn(B, d, device=device, generator=g).to(dtype)
                for what, make, dense in (
                    ("decode fwd+bwd", _decode_fwd_bwd, _dense_decode(idx, v, W, grad, n)),
                    ("encoder bwd", _encoder_bwd, _dense_encoder(idx, v, W, x_c, n)),
                ):
                    t_dense = median_seconds(dense, a.steps, device=device)
                    nbytes = _bytes(B, k, n, d, elt, "decode" if what.startswith("dec") else "enc")
                    rows = [(name, make(ops, idx, v, W, grad if what.startswith("dec") else x_c, n))
                            for name, ops in impls]  # fmt: skip
                    for name, fn in [*rows, ("dense", dense)]:
                        t = (
                            t_dense
                            if name == "dense"
                            else median_seconds(fn, a.steps, device=device)
                        )
                        gbs = nbytes / t / 1e9
                        line = f"{what:<16}{dtype_name:<10}{n:>6}{k:>5}  {name:<7}{t * 1e3:>9.3f}"
                        line += f"{gbs:>9.1f}" + (
                            f"{100 * gbs * 1e9 / peak:>7.1f}%" if peak else ""
                        )
                        print(line + f"{t_dense / t:>9.2f}")
