"""Step-time benchmark of one cell: this library vs a dense implementation vs the GEMM floor.

    python -m sae.bench [step] [--d 384 --n 12288 --k 32 --batch 1024 --steps 20]

Prints a table. (a) is this library's training step; (b) the same recipe done
densely, as the paper's code does it (a [B, n] latent matrix, dense decode, dense
backward); (c) the encoder forward matmul alone, which every TopK SAE must pay.
"""

from __future__ import annotations

import argparse

import torch

from sae.bench.timing import median_seconds
from sae.config import SAEConfig
from sae.losses import fvu
from sae.model import TopKSAE
from sae.optim import constrained_step
from sae.perf import keep_freed_memory


class DenseTopKSAE(TopKSAE):
    """The same model computed densely: every op after the encoder sees all n latents."""

    def forward(self, x_BD, dead_mask_N=None, compute_dtype=None):
        z_pre = (x_BD - self.b_pre) @ self.W_enc.T + self.b_lat
        v, i = z_pre.topk(self.k, dim=1)
        latents_BN = torch.zeros_like(z_pre).scatter(1, i, torch.relu(v))
        x_hat = latents_BN @ self.W_dec + self.b_pre
        nmse = fvu(x_hat, x_BD)
        return nmse, i


def _train_step(model: TopKSAE, opt: torch.optim.Optimizer, x: torch.Tensor, dense: bool):
    def step():
        if dense:
            loss, idx = model(x)
        else:
            out = model(x)
            loss, idx = out.loss, out.indices
        loss.backward()
        constrained_step(model, opt, grad_clip=1.0)
        model.update_dead_counter(idx)

    return step


def run(d: int, n: int, k: int, batch: int, steps: int, threads: int | None) -> dict[str, float]:
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    torch.manual_seed(0)
    x = torch.randn(batch, d)
    x /= x.norm(dim=1, keepdim=True)
    cfg = SAEConfig(d_in=d, n_latents=n, k=k)
    results = {}
    for label, cls, dense in (("sparse", TopKSAE, False), ("dense", DenseTopKSAE, True)):
        model = cls(cfg, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        results[label] = median_seconds(_train_step(model, opt, x, dense), steps)
    W = torch.randn(n, d)
    b = torch.zeros(n)
    results["gemm"] = median_seconds(lambda: torch.addmm(b, x, W.T), steps)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--n", type=int, default=12288)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    r = run(a.d, a.n, a.k, a.batch, a.steps, a.threads)
    gemm = r["gemm"]
    print(
        f"one training step, d={a.d} n={a.n} k={a.k} batch={a.batch}, "
        f"{torch.get_num_threads()} threads, median of {a.steps}"
    )
    print(f"{'what':<44}{'ms':>9}{'x floor':>9}")
    rows = [
        ("(a) this library (sparse TopK step)", r["sparse"]),
        ("(b) dense reference step", r["dense"]),
        ("(c) encoder forward GEMM (floor)", gemm),
    ]
    for label, t in rows:
        print(f"{label:<44}{t * 1e3:>9.1f}{t / gemm:>9.2f}")
    print(f"speed-up of (a) over (b): {r['dense'] / r['sparse']:.2f}x")
