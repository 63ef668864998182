"""Step-time benchmark of one cell: this library vs a dense implementation vs the GEMM floor.

    python -m sae.bench [step] [--d 384 --n 12288 --k 32 --batch 1024 --steps 20 \
                                --dead 0.1 --compute-dtype float32]

Prints a table. (a) is this library's training step (on CUDA once with the Triton
kernels and once with the torch fallback ops); (b) the same recipe done densely, as
the paper's code does it (a [B, n] latent matrix, dense decode, dense backward);
(c) the encoder forward matmul alone, which every TopK SAE must pay.
``--dead`` marks that share of latents dead, so the AuxK loss runs as in real
training (a fresh model has none dead).
Defaults: d=384, batch 1024 on CPU; d=1536, batch 4096 on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import get_args

import torch

from sae.bench.timing import device_name, median_seconds
from sae.config import ComputeDtype, SAEConfig
from sae.kernels import forced_backend
from sae.model import TopKSAE, fvu
from sae.perf import keep_freed_memory
from sae.trainer import constrained_step


class DenseTopKSAE(TopKSAE):
    """The same model computed densely: every op after the encoder sees all n latents."""

    def forward(self, x_BD, dead_mask_N=None, compute_dtype=None):
        z_pre = (x_BD - self.b_pre) @ self.W_enc.T + self.b_lat
        v, i = z_pre.topk(self.k, dim=1)
        latents_BN = torch.zeros_like(z_pre).scatter(1, i, torch.relu(v))
        x_hat = latents_BN @ self.W_dec + self.b_pre
        nmse = fvu(x_hat, x_BD)
        return nmse, i


def _train_step(model, opt, x, dense: bool, compute_dtype):
    def step():
        if dense:
            loss, idx = model(x)
        else:
            out = model(x, compute_dtype=compute_dtype)
            loss, idx = out.loss, out.indices
        loss.backward()
        constrained_step(model, opt, grad_clip=1.0)
        model.update_dead_counter(idx)

    return step


def run(
    d: int,
    n: int,
    k: int,
    batch: int,
    steps: int,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    dead: float = 0.0,
    compute_dtype: str = "float32",
) -> dict[str, float]:
    """Median seconds of one step for each variant: 'sparse' (and on CUDA 'sparse_torch'),
    'dense' and 'gemm'."""
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()
    cd = None if compute_dtype == "float32" else getattr(torch, compute_dtype)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, d, device=device, generator=g)
    x /= x.norm(dim=1, keepdim=True)
    cfg = SAEConfig(d_in=d, n_latents=n, k=k)
    variants = [("sparse", TopKSAE, False, None), ("dense", DenseTopKSAE, True, None)]
    if device.type == "cuda":
        variants.insert(1, ("sparse_torch", TopKSAE, False, "torch"))
    results = {}
    for label, cls, dense, kernels in variants:
        model = cls(cfg, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():  # the first `dead` share of latents has never fired
            model.samples_since_fired[: int(dead * n)] = cfg.dead_threshold + 1
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        step = _train_step(model, opt, x, dense, cd)
        with forced_backend(kernels) if kernels else contextlib.nullcontext():
            results[label] = median_seconds(step, steps, device=device)
    W = torch.randn(n, d, device=device, generator=g)
    b = torch.zeros(n, device=device)
    if cd is None:
        results["gemm"] = median_seconds(lambda: torch.addmm(b, x, W.T), steps, device=device)
    else:
        xc, Wc = x.to(cd), W.to(cd)
        results["gemm"] = median_seconds(lambda: xc @ Wc.T, steps, device=device)
    return results


_LABELS = {
    "sparse": "(a) this library (sparse TopK step)",
    "sparse_torch": "(a') the same with torch ops, no Triton",
    "dense": "(b) dense reference step",
    "gemm": "(c) encoder forward GEMM (floor)",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=1536 if cuda else 384)
    p.add_argument("--n", type=int, default=12288)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096 if cuda else 1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dead", type=float, default=0.0, help="share of latents dead (AuxK on)")
    p.add_argument("--compute-dtype", default="float32", choices=get_args(ComputeDtype))
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    a = p.parse_args(argv)
    r = run(a.d, a.n, a.k, a.batch, a.steps, a.threads, a.device, a.dead, a.compute_dtype)
    gemm = r["gemm"]
    print(
        f"one training step, d={a.d} n={a.n} k={a.k} batch={a.batch} dead={a.dead:.0%}, "
        f"{a.compute_dtype} encoder matmul, on {device_name(a.device)}, median of {a.steps}"
    )
    print(f"{'what':<44}{'ms':>9}{'x floor':>9}")
    for key in ("sparse", "sparse_torch", "dense", "gemm"):
        if key in r:
            print(f"{_LABELS[key]:<44}{r[key] * 1e3:>9.2f}{r[key] / gemm:>9.2f}")
    print(f"speed-up of (a) over (b): {r['dense'] / r['sparse']:.2f}x")
    return r
