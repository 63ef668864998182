"""One epoch of the k x n grid: (a) cells one after another vs (b) fused packs.

    python -m sae.bench grid [--d 384 --rows 10000 --batch 1024 --k 16,32,64,128 \
                              --n 3072,4608,6144,9216,12288 --max-pack-gib 0]

(a) trains each cell alone (its own pass over the data); (b) trains the packs the
planner makes (one pack unless --max-pack-gib splits it), each from one read of
every batch. The floor is the sum over cells of the encoder matmul time, which no
TopK trainer can avoid. Timings cover the second epoch's step loop (no init,
first-touch of optimiser state, or evaluation).
Defaults: d=384 over 10k rows on CPU; d=1536 over 272k rows, batch 4096 on CUDA.
"""

from __future__ import annotations

import argparse

import torch

from sae.bench.timing import device_name, median_seconds
from sae.config import SAEConfig, TrainConfig
from sae.perf import keep_freed_memory
from sae.planner import plan_packs
from sae.trainer import PackTrainer


def _epoch_seconds(cfgs, x, x_eval, train, device) -> float:
    """Seconds of the second epoch: the first also pays for first-touching the
    optimiser state (1.7 GB for the 20-cell grid at d=384), a one-off cost."""
    trainer = PackTrainer(cfgs, train, device=device)
    trainer.fit(x, x_eval)
    return trainer.epoch_seconds[-1]


def measure(
    d: int,
    rows: int,
    batch: int,
    ks: list[int],
    ns: list[int],
    compute_dtype: str,
    device: str | torch.device,
    max_pack_gib: float = 0.0,
    one_by_one: bool = True,
) -> dict:
    """Seconds of one epoch: 'fused' packs, 'one_by_one' cells (unless skipped) and the
    'floor' (sum of the encoder matmuls), with the shapes measured."""
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, d, device=device, generator=g)
    x /= x.norm(dim=1, keepdim=True)
    x_eval = x[:256]
    cfgs = [SAEConfig(d_in=d, n_latents=n, k=k) for k in ks for n in ns]
    train = TrainConfig(
        batch_size=batch, epochs=2, warmup_steps=0, log_every_steps=0,
        compute_dtype=compute_dtype,
    )  # fmt: skip
    steps = rows // batch
    xb = x[:batch]
    cd = getattr(torch, compute_dtype)
    floor = 0.0
    for c in cfgs:
        W = torch.randn(c.n_latents, d, device=device, generator=g).to(cd)
        floor += steps * median_seconds(lambda W=W: xb.to(cd) @ W.T, 5, device=device)
    budget = int(max_pack_gib * 2**30) or None
    by_cell = {(c.k, c.n_latents): c for c in cfgs}
    packs = [
        [by_cell[cell] for cell in p.cells]
        for p in plan_packs(list(by_cell), 1, batch, memory_budget_bytes=budget, d_in=d)
    ]
    out = {
        "cells": len(cfgs), "rows": rows, "d": d, "batch": batch, "steps": steps,
        "compute_dtype": compute_dtype, "packs": len(packs), "floor": floor,
        "fused": sum(_epoch_seconds(pk, x, x_eval, train, device) for pk in packs),
    }  # fmt: skip
    if one_by_one:
        out["one_by_one"] = sum(_epoch_seconds([c], x, x_eval, train, device) for c in cfgs)
    return out


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=1536 if cuda else 384)
    p.add_argument("--rows", type=int, default=272_000 if cuda else 10_000)
    p.add_argument("--batch", type=int, default=4096 if cuda else 1024)
    p.add_argument("--k", default="16,32,64,128")
    p.add_argument("--n", default="3072,4608,6144,9216,12288")
    p.add_argument("--compute-dtype", default="bfloat16" if cuda else "float32")
    p.add_argument("--max-pack-gib", type=float, default=0.0, help="0: one pack")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    a = p.parse_args(argv)
    ks, ns = ([int(v) for v in s.split(",")] for s in (a.k, a.n))
    r = measure(a.d, a.rows, a.batch, ks, ns, a.compute_dtype, a.device, a.max_pack_gib)
    print(
        f"one epoch of {r['cells']} cells over {a.rows} x {a.d} ({r['steps']} steps of "
        f"{a.batch}), {a.compute_dtype} encoder matmul, on {device_name(a.device)}"
    )
    print(f"{'what':<46}{'s':>9}{'x floor':>9}")
    for label, t in (
        ("(a) cells one after another", r["one_by_one"]),
        (f"(b) fused, {r['packs']} pack(s)", r["fused"]),
        ("floor: sum of encoder matmuls", r["floor"]),
    ):
        print(f"{label:<46}{t:>9.2f}{t / r['floor']:>9.2f}")
    print(f"speed-up of (b) over (a): {r['one_by_one'] / r['fused']:.2f}x")
    return r
