"""The k x n grid's training step: cells one by one (a pack) vs stacks of equal n.

    python -m sae.bench stacked [--d 384 --batch 1024 --k 16,32,64,128 \
        --n 3072,4608,6144,9216,12288 --dead 0.1 --steps 3]

(a) is a pack's step as PackTrainer takes it: PackEncoder's pre-activations, then each
cell's forward, backward and Adam step in turn (AuxK finds each cell's dead latents with
``nonzero``, a host sync). (b) runs the same cells as one stack per n
(``sae.stacked``): one top-k per stack, the sync-free masked AuxK, one fused Adam per
stack. The floor is the sum over cells of the encoder forward GEMM. ``--dead`` marks that
share of every cell's latents dead, so AuxK runs. Then AuxK's dead-latent search alone,
both ways, and one cell's step against its GEMM (the issue's "CPU step vs its floor").
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import subprocess

import torch

from sae.bench.timing import device_name, median_seconds
from sae.config import SAEConfig
from sae.model import TopKSAE
from sae.pack import PackEncoder
from sae.perf import keep_freed_memory
from sae.stacked import StackedSAE, make_optimizer, stack_groups, stacked_step
from sae.trainer import constrained_step


def cpu_name() -> str:
    """The CPU's model name (lscpu), for figures measured on it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (
        f"{fields.get('Model name', '?').strip()} ({isa}, {fields.get('CPU(s)', '?').strip()} CPUs)"
    )


def _models(cfgs, dead: float, device) -> list[TopKSAE]:
    models = []
    for i, cfg in enumerate(cfgs):
        m = TopKSAE(cfg, generator=torch.Generator().manual_seed(i)).to(device)
        with torch.no_grad():  # the first `dead` share of latents has never fired
            m.samples_since_fired[: int(dead * cfg.n_latents)] = cfg.dead_threshold + 1
        models.append(m)
    return models


def _per_cell_step(models, x_BD):
    encoder = PackEncoder(models)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-4, fused=True) for m in models]
    counters = [m.samples_since_fired.clone() for m in models]

    def step():
        for m, opt, z, dead in zip(
            models, opts, encoder.pre_activations(x_BD), counters, strict=True
        ):
            out = m(x_BD, z_pre_BN=z)
            out.loss.backward()
            constrained_step(m, opt, 1.0)
            m.update_dead_counter(out.indices, out.values)
            m.samples_since_fired.copy_(dead)  # keep the dead share steady across repeats

    return step


def _stacked_step(models, x_BD):
    stacks = [StackedSAE([models[i] for i in g]) for g in stack_groups([m.cfg for m in models])]
    opts = [make_optimizer(s, 1e-4, (0.9, 0.999), 1e-8) for s in stacks]
    counters = [s.samples_since_fired.clone() for s in stacks]

    def step():
        for s, opt, dead in zip(stacks, opts, counters, strict=True):
            stacked_step(s, opt, x_BD, 1.0)
            s.samples_since_fired.copy_(dead)

    return step


def _gemm_floor(cfgs, x_BD, steps, device) -> float:
    g = torch.Generator(device=device).manual_seed(1)
    total = 0.0
    for c in cfgs:
        W = torch.randn(c.n_latents, c.d_in, device=device, generator=g)
        b = torch.zeros(c.n_latents, device=device)
        total += median_seconds(lambda W=W, b=b: torch.addmm(b, x_BD, W.T), steps, device=device)
    return total


def aux_search(z_BN: torch.Tensor, dead_N: torch.Tensor, k_aux: int, steps: int, device):
    """Seconds of AuxK's dead-latent search: 'sync' (nonzero, then a top-k over the dead
    columns, as TopKSAE does) and 'masked' (live columns at -inf, a top-k over all n)."""

    def sync():
        ids = dead_N.nonzero().squeeze(1)
        _, pos = z_BN.index_select(1, ids).topk(min(k_aux, ids.numel()), dim=1, sorted=False)
        return ids[pos]

    def masked():
        return z_BN.masked_fill(~dead_N, -torch.inf).topk(k_aux, dim=1, sorted=True)

    return {
        "sync": median_seconds(sync, steps, device=device),
        "masked": median_seconds(masked, steps, device=device),
    }


def _interleaved(steps_by_label: dict, steps: int, device) -> dict[str, float]:
    """Median seconds of each step, the variants taking turns, so a load that comes
    and goes on a shared machine falls on both alike."""
    for fn in steps_by_label.values():
        fn()  # warm-up: first touch of the optimiser state
    times: dict[str, list[float]] = {label: [] for label in steps_by_label}
    for _ in range(steps):
        for label, fn in steps_by_label.items():
            times[label].append(median_seconds(fn, 1, 0, device))
    return {label: statistics.median(t) for label, t in times.items()}


def _both(cfgs, dead, x, steps, device) -> dict[str, float]:
    return _interleaved(
        {"per_cell": _per_cell_step(_models(cfgs, dead, device), x),
         "stacked": _stacked_step(_models(cfgs, dead, device), x)},
        steps, device,
    )  # fmt: skip


def measure(d, batch, ks, ns, dead, steps, device) -> dict:
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, d, device=device, generator=g)
    x /= x.norm(dim=1, keepdim=True)
    cfgs = [SAEConfig(d_in=d, n_latents=n, k=k) for k in ks for n in ns]
    out = {
        "cells": len(cfgs),
        "stacks": len(stack_groups(cfgs)),
        **_both(cfgs, dead, x, steps, device),
    }
    gc.collect()
    out["floor"] = _gemm_floor(cfgs, x, steps, device)

    n, k = max(ns), 32 if 32 in ks else ks[0]
    one = [SAEConfig(d_in=d, n_latents=n, k=k)]
    out["one"] = {"n": n, "k": k, "floor": _gemm_floor(one, x, steps * 3, device),
                  **_both(one, dead, x, steps * 3, device)}  # fmt: skip
    z = torch.randn(batch, n, device=device, generator=g)
    dead_N = torch.zeros(n, dtype=torch.bool, device=device)
    dead_N[: int(dead * n)] = True
    out["aux"] = aux_search(z, dead_N, one[0].effective_k_aux, steps * 5, device)
    return out


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--k", default="16,32,64,128")
    p.add_argument("--n", default="3072,4608,6144,9216,12288")
    p.add_argument("--dead", type=float, default=0.1, help="share of latents dead (AuxK on)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    a = p.parse_args(argv)
    ks, ns = ([int(v) for v in s.split(",")] for s in (a.k, a.n))
    r = measure(a.d, a.batch, ks, ns, a.dead, a.steps, a.device)
    where = device_name(a.device)
    if torch.device(a.device).type == "cpu":
        where += f", {cpu_name()}"
    print(
        f"one training step of {r['cells']} cells, d={a.d} batch={a.batch} dead={a.dead:.0%}, "
        f"fp32, on {where}, median of {a.steps}"
    )
    print(f"{'what':<52}{'ms':>10}{'x floor':>9}")
    rows = (
        ("(a) per cell, as a pack steps", r["per_cell"]),
        (f"(b) stacked, {r['stacks']} stacks of equal n", r["stacked"]),
        ("floor: sum of encoder forward GEMMs", r["floor"]),
    )
    for label, t in rows:
        print(f"{label:<52}{t * 1e3:>10.1f}{t / r['floor']:>9.2f}")
    print(f"speed-up of (b) over (a): {r['per_cell'] / r['stacked']:.2f}x")
    one = r["one"]
    print(f"one cell (n={one['n']}, k={one['k']}), AuxK on:")
    for label, key in (("per-cell step", "per_cell"), ("stacked step (C=1)", "stacked")):
        print(f"  {label:<50}{one[key] * 1e3:>10.1f}{one[key] / one['floor']:>9.2f}")
    print(f"  {'encoder forward GEMM (floor)':<50}{one['floor'] * 1e3:>10.1f}{1:>9.2f}")
    aux = r["aux"]
    print(
        f"AuxK dead-latent search alone, [B, n] = [{a.batch}, {one['n']}]: sync (nonzero) "
        f"{aux['sync'] * 1e3:.2f} ms, masked top-k {aux['masked'] * 1e3:.2f} ms "
        f"({aux['masked'] / aux['sync']:.2f}x)"
    )
    return r
