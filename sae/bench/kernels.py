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


def measure(
    d: int,
    ns: list[int],
    ks: list[int],
    batch: int,
    dtypes: list[str],
    steps: int,
    device: str | torch.device,
) -> list[dict]:
    """One row per (op, dtype, n, k, impl): ms, GB/s, % of peak bandwidth, speed-up over dense."""
    device = torch.device(device)
    impls = [("torch", torch_ops)]
    if device.type == "cuda":
        from sae.kernels import triton_ops

        impls.insert(0, ("triton", triton_ops))
    peak = peak_bandwidth(device)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        elt = torch.finfo(dtype).bits // 8
        for n in ns:
            W = torch.randn(n, d, device=device, generator=g).to(dtype)
            for k in ks:
                idx = torch.randint(0, n, (batch, k), device=device, generator=g)
                v = torch.rand(batch, k, device=device, generator=g).to(dtype)
                grad = torch.randn(batch, d, device=device, generator=g)
                x_c = torch.randn(batch, d, device=device, generator=g).to(dtype)
                for what, make, dense, kind in (
                    (
                        "decode fwd+bwd",
                        _decode_fwd_bwd,
                        _dense_decode(idx, v, W, grad, n),
                        "decode",
                    ),
                    ("encoder bwd", _encoder_bwd, _dense_encoder(idx, v, W, x_c, n), "enc"),
                ):
                    nbytes = _bytes(batch, k, n, d, elt, kind)
                    other = grad if kind == "decode" else x_c
                    t_dense = median_seconds(dense, steps, device=device)
                    timed = [
                        (name, median_seconds(make(ops, idx, v, W, other, n), steps, device=device))
                        for name, ops in impls
                    ]
                    for name, t in [*timed, ("dense", t_dense)]:
                        gbs = nbytes / t / 1e9
                        rows.append({
                            "op": what, "dtype": dtype_name, "n": n, "k": k, "impl": name,
                            "ms": t * 1e3, "gb_s": gbs,
                            "pct_peak": 100 * gbs * 1e9 / peak if peak else None,
                            "x_dense": t_dense / t,
                        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=1536 if cuda else 384)
    p.add_argument("--n", default="3072,12288")
    p.add_argument("--k", default="16,128")
    p.add_argument("--batch", type=int, default=4096 if cuda else 1024)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    a = p.parse_args(argv)
    ints = [[int(v) for v in s.split(",")] for s in (a.n, a.k)]
    rows = measure(a.d, *ints, a.batch, a.dtypes.split(","), a.steps, a.device)
    peak = peak_bandwidth(a.device)
    print(
        f"sparse kernels on {device_name(a.device)}, d={a.d}, batch={a.batch}, median of {a.steps}"
    )
    head = f"{'op':<16}{'dtype':<10}{'n':>6}{'k':>5}  {'impl':<7}{'ms':>9}{'GB/s':>9}"
    print(head + (f"{'% peak':>8}" if peak else "") + f"{'x dense':>9}")
    for r in rows:
        line = f"{r['op']:<16}{r['dtype']:<10}{r['n']:>6}{r['k']:>5}  {r['impl']:<7}"
        line += f"{r['ms']:>9.3f}{r['gb_s']:>9.1f}"
        line += f"{r['pct_peak']:>7.1f}%" if peak else ""
        print(line + f"{r['x_dense']:>9.2f}")
    return rows
