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


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=1536 if cuda else 384)
    p.add_argument("--rows", type=int, default=272_000 if cuda else 10_000)
    p.add_argument("--batch", type=int, default=4096 if cuda else 1024)
    p.add_argument("--k", default="16,32,64,128")
    p.add_argument("--n", default="3072,4608,6144,9216,12288")
    p.add_argument("--compute-dtype", default="bfloat16" if cuda else "float32")
    p.add_argument("--max-pack-gib", type=float, default=0.0, help="0: one pack")
    a = p.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        keep_freed_memory()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(a.rows, a.d, device=device, generator=g)
    x /= x.norm(dim=1, keepdim=True)
    x_eval = x[:256]
    cfgs = [
        SAEConfig(d_in=a.d, n_latents=int(n), k=int(k))
        for k in a.k.split(",")
        for n in a.n.split(",")
    ]
    train = TrainConfig(
        batch_size=a.batch, epochs=2, warmup_steps=0, log_every_steps=0,
        compute_dtype=a.compute_dtype,
    )  # fmt: skip
    steps = a.rows // a.batch
    xb = x[: a.batch]
    cd = getattr(torch, a.compute_dtype)
    floor = 0.0
    for c in cfgs:
        W = torch.randn(c.n_latents, a.d, device=device, generator=g).to(cd)
        floor += steps * median_seconds(lambda W=W: xb.to(cd) @ W.T, 5, device=device)
    budget = int(a.max_pack_gib * 2**30) or None
    packs = plan_packs(cfgs, 1, a.batch, memory_budget_bytes=budget)
    fused = sum(_epoch_seconds(pk.cells, x, x_eval, train, device) for pk in packs)
    one_by_one = sum(_epoch_seconds([c], x, x_eval, train, device) for c in cfgs)
    print(
        f"one epoch of {len(cfgs)} cells over {a.rows} x {a.d} ({steps} steps of {a.batch}), "
        f"{a.compute_dtype} encoder matmul, on {device_name(device)}"
    )
    print(f"{'what':<46}{'s':>9}{'x floor':>9}")
    for label, t in (
        ("(a) cells one after another", one_by_one),
        (f"(b) fused, {len(packs)} pack(s)", fused),
        ("floor: sum of encoder matmuls", floor),
    ):
        print(f"{label:<46}{t:>9.2f}{t / floor:>9.2f}")
    print(f"speed-up of (b) over (a): {one_by_one / fused:.2f}x")
