"""TopK cells at each n of a small grid beside one BatchTopK and two Matryoshka SAEs of
the largest n (their prefixes cut as dedicated SAEs: :func:`sae.metrics.prefix_metrics`),
trained in one pack on synthetic sparse data, judged on the same held-out rows.

    .venv/bin/python scripts/arch_compare.py --epochs 10

Prints one JSON object per cell: held-out NMSE, L0 (BatchTopK's varies), dead fraction,
the BatchTopK threshold and, for the non-TopK cells, the NMSE of each prefix used alone.

Measured (2 CPU cores, 10 epochs = 780 steps, k = 8, d = 64), held-out NMSE at n =
128 / 192 / 256 / 384 / 512: TopK trained at each n 0.531 / 0.512 / 0.500 / 0.485 / 0.476;
Matryoshka-TopK (one model) 0.561 / 0.525 / 0.508 / 0.493 / 0.485; Matryoshka-BatchTopK
0.670 / 0.594 / 0.554 / 0.516 / 0.495; BatchTopK cut by index 0.836 / ... / 0.488 (L0 7.98).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sae import PackTrainer, SAEConfig, TrainConfig
from sae.data import sparse_dictionary_data
from sae.metrics import prefix_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n", default="128,192,256,384,512", help="The grid's n, comma-separated.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    ns = sorted(int(v) for v in args.n.split(","))
    d, k, big = args.d, args.k, ns[-1]

    x = sparse_dictionary_data(24000, d, n_atoms=768, active=8, seed=0)
    x_train, x_eval = x[:20000], x[20000:]
    cfgs = [SAEConfig(d_in=d, n_latents=n, k=k) for n in ns] + [
        SAEConfig(d_in=d, n_latents=big, k=k, arch="batchtopk"),
        SAEConfig(d_in=d, n_latents=big, k=k, arch="matryoshka", prefixes=tuple(ns)),
        SAEConfig(
            d_in=d, n_latents=big, k=k, arch="matryoshka", prefixes=tuple(ns),
            matryoshka_selection="batchtopk",
        ),
    ]  # fmt: skip
    train = TrainConfig(batch_size=256, lr=1e-3, epochs=args.epochs, log_every_steps=0)
    t0 = time.time()
    trainer = PackTrainer(cfgs, train, device=args.device)
    rows = {}
    for r in trainer.fit(x_train, x_eval):
        model = trainer.model(r.name).eval()
        row = {
            "nmse": round(r.metrics.nmse, 4),
            "l0": round(r.metrics.l0, 2),
            "dead": round(r.metrics.dead_fraction, 4),
        }
        if r.sae_cfg.selection == "batchtopk":
            row["threshold"] = round(model.threshold.item(), 4)
        if r.sae_cfg.arch != "topk":
            row["prefixes"] = {
                p.n_latents: round(p.nmse, 4) for p in prefix_metrics(model, x_eval, ns)
            }
        rows[r.name] = row
    print(json.dumps(rows, indent=1))
    print(f"{time.time() - t0:.0f} s: {args.epochs} epochs of {len(x_train)} rows, d={d}, k={k}")


if __name__ == "__main__":
    main()
