"""The paper's table on our data: the 20-cell grid per domain, trained until NMSE
flattens, beside the paper's own training step (Christine8888/saerch ``topk_sae.py``,
re-written plainly below) at equal data and steps.

Three steps, so the heavy one runs anywhere torch does (a lent GPU machine has torch and
triton but none of the pipeline's packages):

    # 1. here: the shared sample validated into the corpus (`sae ingest`), as texts
    .venv/bin/python scripts/paper_table.py export --home $SAE_HOME --out .science/data
    # 2. on a GPU (or a CPU, for days): embed, then the grids and the recipe check
    python3 scripts/paper_table.py embed --data .science/data
    python3 scripts/paper_table.py train --data .science/data --out $OUT --grid-s 200
    # 3. here: the README's table, the NMSE-vs-k frontier and the training curves
    .venv/bin/python scripts/paper_table.py report --results docs/science/paper_table.json

``train --dry-run`` runs the whole path on toy data in seconds (the tests do).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.config import RunInfo, SAEConfig, TrainConfig
from sae.importance import latent_importance, power_law_fit
from sae.metrics import evaluate
from sae.trainer import PackTrainer

PAPER_K = (16, 32, 64, 128)
PAPER_N = (3072, 4608, 6144, 9216, 12288)
DOMAINS = {"cs_lg": "cs.LG", "astro_ph": "astro-ph"}
# The cells the paper's table shows, and the two the recipe check compares.
TABLE_CELLS = ((16, 3072), (64, 9216), (128, 12288))
PARITY_CELLS = ((16, 3072), (64, 9216))


# ------------------------------------------------------------------ export (here)
def export(home: str, out: Path) -> None:
    """Each domain's validated corpus as the texts the pipeline embeds, with the sweep's
    held-out flag (1 id in 20, by id hash), and the bundled MiniLM with fp16 weights (half
    the size: a lent machine takes 64 MiB; fp32 again before use, so only the weights'
    last bits differ: see :func:`embed`)."""
    import gzip
    import os
    import shutil

    os.environ["SAE_HOME"] = home
    from safetensors.torch import load_file, save_file

    from infra.settings import get_settings
    from tasks.corpus.domains import get_domain
    from tasks.corpus.storage import read_papers
    from tasks.embed.embedders import paper_text
    from tasks.embed.local import bundled_minilm_path
    from tasks.embed.rows import EVAL_EVERY, id_hash
    from tasks.layout import open_store

    store = open_store(get_settings())
    out.mkdir(parents=True, exist_ok=True)
    for slug, name in DOMAINS.items():
        papers = read_papers(store, get_domain(name)).sort("id")
        held_out = (id_hash(papers["id"]) % EVAL_EVERY == 0).to_list()
        with gzip.open(out / f"{slug}.texts.jsonl.gz", "wt") as f:
            for row, is_eval in zip(papers.iter_rows(named=True), held_out, strict=True):
                text = paper_text(row["title"], row["abstract"])
                f.write(json.dumps({"id": row["id"], "text": text, "eval": is_eval}) + "\n")
        print(f"{name}: {papers.height} papers, {sum(held_out)} held out")
    model = out / "minilm"
    shutil.copytree(bundled_minilm_path(), model, dirs_exist_ok=True)
    weights = load_file(model / "model.safetensors")
    save_file({k: v.half() for k, v in weights.items()}, model / "model.safetensors")


def embed(data: Path, model: Path, limit: int | None = None) -> None:
    """Each domain's texts through the pipeline's own MiniLM embedder (fp16 autocast on a
    GPU, as ``sae embed`` runs there), as ``{slug}.train.npy`` / ``{slug}.eval.npy``."""
    import gzip
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file

    from tasks.embed.local import MeanPoolEmbedder

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "minilm"
        shutil.copytree(model, fp32)
        weights = load_file(model / "model.safetensors")
        save_file({k: v.float() for k, v in weights.items()}, fp32 / "model.safetensors")
        embedder = MeanPoolEmbedder(fp32, name="minilm-l6-v2", cache_dir=Path(tmp) / "cache")
        for slug in DOMAINS:
            with gzip.open(data / f"{slug}.texts.jsonl.gz", "rt") as f:
                rows = [json.loads(line) for line in f][:limit]
            t0 = time.perf_counter()
            x = embedder.embed([r["text"] for r in rows])
            held_out = np.array([r["eval"] for r in rows], dtype=bool)
            np.save(data / f"{slug}.train.npy", x[~held_out])
            np.save(data / f"{slug}.eval.npy", x[held_out])
            rate = len(rows) / (time.perf_counter() - t0)
            print(f"{slug}: {len(rows)} embedded ({rate:.0f}/s), {held_out.sum()} held out")


# ---------------------------------------------------------- the paper's own step
class PaperSAE(torch.nn.Module):
    """The step of the paper's ``topk_sae.py`` (FastAutoencoder + loss_fn + train), kept
    dense and plain on purpose: xavier-uniform decoder at unit norm, encoder its
    transpose, pre-bias the coordinate median of the first 10,000 rows, AuxK over latents
    not fired for 266 *steps* (live ones zeroed, not masked), Adam with clip 1.0."""

    def __init__(self, x_sample: torch.Tensor, n: int, k: int):
        super().__init__()
        d = x_sample.shape[1]
        self.k, self.k_aux = k, 2 * k
        dec = torch.empty(d, n, device=x_sample.device)
        torch.nn.init.xavier_uniform_(dec)
        dec /= dec.norm(dim=0, keepdim=True)
        self.W_dec = torch.nn.Parameter(dec)  # [d, n], as nn.Linear(n, d) stores it
        self.W_enc = torch.nn.Parameter(dec.t().clone())  # [n, d]
        self.b_pre = torch.nn.Parameter(x_sample[:10000].median(dim=0).values.clone())
        self.b_lat = torch.nn.Parameter(torch.zeros(n, device=x_sample.device))
        self.register_buffer("steps_since", torch.zeros(n, dtype=torch.long, device=dec.device))

    def latents(self, x):
        z_pre = (x - self.b_pre) @ self.W_enc.T + self.b_lat
        v, i = z_pre.topk(self.k, dim=-1)
        return z_pre, torch.zeros_like(z_pre).scatter_(-1, i, v.relu()), i

    def loss(self, x):
        z_pre, z, idx = self.latents(x)
        self.steps_since += 1
        self.steps_since.scatter_(0, idx.unique(), 0)
        recons = z @ self.W_dec.T + self.b_pre
        loss = _paper_nmse(recons, x)
        dead = (self.steps_since > 266).float()
        av, ai = (z_pre * dead).topk(self.k_aux, dim=-1)
        e_hat = torch.zeros_like(z_pre).scatter_(-1, ai, av.relu()) @ self.W_dec.T
        return loss + _paper_nmse(e_hat, x - recons.detach()) / 32

    @torch.no_grad()
    def reconstruct(self, x):
        return self.latents(x)[1] @ self.W_dec.T + self.b_pre

    def step(self, x, opt):
        opt.zero_grad()
        self.loss(x).backward()
        with torch.no_grad():  # unit_norm_decoder_grad_adjustment_
            g, w = self.W_dec.grad, self.W_dec
            g.sub_((w * g).sum(dim=0, keepdim=True) * w)
        torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True))


def _paper_nmse(recon, x):
    return (recon - x).pow(2).mean() / (x.mean(dim=0, keepdim=True) - x).pow(2).mean()


def heldout_nmse(reconstruct, x_eval: torch.Tensor) -> float:
    """One formula for both implementations: centred NMSE over the whole split."""
    x = x_eval.double()
    err = (reconstruct(x_eval).double() - x).pow(2).sum()
    return (err / (x - x.mean(dim=0)).pow(2).sum()).item()


def train_paper(x_train, x_eval, k: int, n: int, steps: int, seed: int) -> dict:
    """The paper's loop (shuffled batches of 1024, the last partial batch included) for
    ``steps`` steps."""
    torch.manual_seed(seed)
    model = PaperSAE(x_train, n, k)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    done, t0 = 0, time.perf_counter()
    while done < steps:
        for rows in torch.randperm(len(x_train), device=x_train.device).split(1024):
            model.step(x_train[rows], opt)
            done += 1
            if done == steps:
                break
    _sync()
    return {
        "nmse": heldout_nmse(model.reconstruct, x_eval),
        "steps": steps,
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------- the grid (there)
def train_grid(x_train, x_eval, domain: str, grid_s: float, max_epochs: int, cells) -> dict:
    """Every cell in one pack, for as many epochs as ``grid_s`` seconds allow (measured on
    two calibration epochs), with a held-out NMSE curve."""
    configs = [SAEConfig(d_in=x_train.shape[1], n_latents=n, k=k) for k, n in cells]
    batch = min(1024, len(x_train))
    calib = PackTrainer(configs, _train_cfg(batch, 3, 0), run=RunInfo(domain=domain))
    calib.fit(x_train, x_eval)
    per_epoch = min(calib.epoch_seconds[1:])  # the first compiles the kernels
    epochs = max(1, min(max_epochs, int(grid_s / max(per_epoch, 1e-6))))
    steps_per_epoch = len(x_train) // batch
    every = max(1, (epochs * steps_per_epoch) // 24)  # about two dozen points a curve
    curves: dict[str, list] = {}
    trainer = PackTrainer(configs, _train_cfg(batch, epochs, every), run=RunInfo(domain=domain))

    def on_log(name: str, step: int, metrics: dict) -> None:
        model = trainer.model(name)
        held_out = evaluate(model, x_eval).metrics.nmse
        curves.setdefault(name, []).append(
            [step, metrics["train_nmse"], held_out, metrics["train_dead_fraction"]]
        )

    trainer.on_log = on_log
    t0 = time.perf_counter()
    results = trainer.fit(x_train, x_eval)
    seconds = time.perf_counter() - t0
    out = {}
    for (k, n), r in zip(cells, results, strict=True):
        fit = power_law_fit(latent_importance(trainer.model(r.name), x_eval))
        out[f"{k}x{n}"] = {
            "k": k,
            "n": n,
            "metrics": r.metrics.as_dict(),
            "steps": r.steps,
            "dead_window": r.sae_cfg.dead_threshold_samples,
            "importance_exponent": fit.exponent,
            "importance_r2": fit.r2,
            "curve": curves.get(r.name, []),
        }
    return {
        "epochs": epochs,
        "steps": epochs * steps_per_epoch,
        "epoch_seconds": per_epoch,
        "seconds": seconds,
        "train": len(x_train),
        "eval": len(x_eval),
        "cells": out,
    }


def _train_cfg(batch: int, epochs: int, log_every: int) -> TrainConfig:
    # The paper's recipe; every other setting is the library's default.
    return TrainConfig(
        batch_size=batch, lr=1e-4, epochs=epochs, log_every_steps=log_every, checkpoint_every_s=0
    )


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train(args) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "domains": {},
    }
    if args.dry_run:
        g = torch.Generator().manual_seed(0)
        data = {"cs_lg": (torch.randn(600, 16, generator=g), torch.randn(60, 16, generator=g))}
        cells, parity = ((4, 32), (4, 48), (8, 32), (8, 48)), ((4, 32),)
    else:
        data = {
            slug: tuple(
                torch.from_numpy(np.load(Path(args.data) / f"{slug}.{part}.npy"))
                for part in ("train", "eval")
            )
            for slug in DOMAINS
        }
        cells = args.cells or tuple((k, n) for k in PAPER_K for n in PAPER_N)
        parity = PARITY_CELLS if args.parity else ()
    for slug, (x_train, x_eval) in data.items():
        x_train, x_eval = x_train.to(device), x_eval.to(device)
        print(f"== {slug}: {tuple(x_train.shape)} train, {len(x_eval)} eval", flush=True)
        grid = train_grid(x_train, x_eval, DOMAINS[slug], args.grid_s, args.max_epochs, cells)
        result["domains"][slug] = grid
        print(
            f"   {grid['epochs']} epochs = {grid['steps']} steps in {grid['seconds']:.0f} s",
            flush=True,
        )
        for key, c in grid["cells"].items():
            m = c["metrics"]
            print(f"   {key:>9}  nmse {m['nmse']:.4f}  dead {m['dead_fraction']:.3f}", flush=True)
        _write(out, result)
        if slug == "cs_lg" and parity:
            result["parity"] = {}
            for k, n in parity:
                ours = grid["cells"][f"{k}x{n}"]["metrics"]["nmse"]
                paper = train_paper(x_train, x_eval, k, n, grid["steps"], seed=0)
                result["parity"][f"{k}x{n}"] = {"ours": ours, "paper_code": paper}
                print(
                    f"   parity {k}x{n}: ours {ours:.4f}  paper's code {paper['nmse']:.4f} "
                    f"({100 * (ours / paper['nmse'] - 1):+.1f}%)",
                    flush=True,
                )
                _write(out, result)
    print("paper table: done", flush=True)


def _write(out: Path, result: dict) -> None:
    tmp = out / "paper_table.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "paper_table.json")


# ----------------------------------------------------------------- report (here)
def report(grid_file: Path, long_file: Path | None, figures: Path) -> None:
    """The README's table, the trends it states and the figures: the frontier from the
    whole grid (``grid_file``), the table and the curves from the table's cells trained
    longer (``long_file``; the grid file again if there is none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid_res = json.loads(grid_file.read_text())
    long_res = json.loads(long_file.read_text()) if long_file else grid_res
    figures.mkdir(parents=True, exist_ok=True)
    print("| domain | k | n | steps | NMSE | best NMSE (step) | log10 FD | act mean | dead |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for slug, run in long_res["domains"].items():
        for k, n in TABLE_CELLS:
            c = run["cells"][f"{k}x{n}"]
            m = c["metrics"]
            best = min(c["curve"], key=lambda p: p[2]) if c["curve"] else [c["steps"], 0, m["nmse"]]
            print(
                f"| {DOMAINS[slug]} | {k} | {n} | {c['steps']} | {m['nmse']:.3f} | "
                f"{best[2]:.3f} ({best[0]}) | {m['log_feature_density']:.2f} | "
                f"{m['act_mean']:.3f} | {100 * m['dead_fraction']:.1f}% |"
            )
    for line in trends(grid_res):
        print(line)
    fig, axes = plt.subplots(1, len(grid_res["domains"]), figsize=(11, 4), squeeze=False)
    for ax, (slug, run) in zip(axes[0], grid_res["domains"].items(), strict=False):
        for n in PAPER_N:
            pts = [(c["k"], c["metrics"]["nmse"]) for c in run["cells"].values() if c["n"] == n]
            if pts:
                ks, nmse = zip(*sorted(pts), strict=True)
                ax.plot(ks, nmse, marker="o", label=f"n={n}")
        title = f"{DOMAINS[slug]}, {run['steps']} steps"
        ax.set(xscale="log", xlabel="k", ylabel="held-out NMSE", title=title)
        ax.minorticks_off()  # log-axis minor labels ("3 x 10^1") would overprint the k values
        ax.set_xticks(PAPER_K, [str(k) for k in PAPER_K])
        ax.legend()
    fig.tight_layout()
    fig.savefig(figures / "frontier.png", dpi=110)
    fig, axes = plt.subplots(1, len(long_res["domains"]), figsize=(11, 4), squeeze=False)
    for ax, (slug, run) in zip(axes[0], long_res["domains"].items(), strict=False):
        for key, c in run["cells"].items():
            if c["curve"]:
                steps, train, held_out, _ = zip(*c["curve"], strict=True)
                (line,) = ax.plot(steps, held_out, label=f"{key} held out")
                ax.plot(steps, train, ls=":", color=line.get_color(), label=f"{key} train")
        ax.set(xlabel="step", ylabel="NMSE", title=DOMAINS[slug], yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "curves.png", dpi=110)
    for key, p in grid_res.get("parity", {}).items():
        ours, theirs = p["ours"], p["paper_code"]["nmse"]
        print(
            f"parity {key}: ours {ours:.4f}, paper's code {theirs:.4f} ({ours / theirs - 1:+.2%})"
        )


def trends(res: dict) -> list[str]:
    """Which of the paper's trends hold in a grid run, each checked over every pair."""
    lines = []
    for slug, run in res["domains"].items():
        cells = {(c["k"], c["n"]): c["metrics"] for c in run["cells"].values()}
        ks = sorted({k for k, _ in cells})
        ns = sorted({n for _, n in cells})

        def share(pairs, better, cells=cells) -> str:
            pairs = [(a, b) for a, b in pairs if a in cells and b in cells]
            good = sum(better(cells[a], cells[b]) for a, b in pairs)
            return f"{good}/{len(pairs)}"

        by_k = [((k1, n), (k2, n)) for n in ns for k1, k2 in itertools.pairwise(ks)]
        by_n = [((k, n1), (k, n2)) for k in ks for n1, n2 in itertools.pairwise(ns)]
        dead = max(m["dead_fraction"] for m in cells.values())
        lines.append(
            f"{DOMAINS[slug]} ({run['steps']} steps): NMSE falls with k in "
            f"{share(by_k, lambda a, b: b['nmse'] < a['nmse'])} steps of k, with n in "
            f"{share(by_n, lambda a, b: b['nmse'] < a['nmse'])} steps of n; act mean falls "
            f"with k in {share(by_k, lambda a, b: b['act_mean'] < a['act_mean'])}; log FD "
            f"rises with k in "
            f"{share(by_k, lambda a, b: b['log_feature_density'] > a['log_feature_density'])}"
            f"; largest dead fraction {100 * dead:.1f}%"
        )
    return lines


def _cells(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(v) for v in cell.split("x")) for cell in text.split(","))  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export")
    p.add_argument("--home", required=True)
    p.add_argument("--out", default=".science/data")
    p = sub.add_parser("embed")
    p.add_argument("--data", default=".science/data")
    p.add_argument("--limit", type=int, default=None, help="the first N texts per domain")
    p = sub.add_parser("train")
    p.add_argument("--data", default=".science/data")
    p.add_argument("--out", default="paper_table_out")
    p.add_argument("--grid-s", type=float, default=200.0, help="training seconds per domain")
    p.add_argument("--max-epochs", type=int, default=2000)
    p.add_argument("--dry-run", action="store_true", help="toy data, seconds, any machine")
    p.add_argument("--cells", type=_cells, default=None, help="16x3072,64x9216 (default: all)")
    p.add_argument("--no-parity", dest="parity", action="store_false", help="skip the recipe check")
    p = sub.add_parser("report")
    p.add_argument("--results", default="docs/science/paper_table.json")
    p.add_argument("--long", default="docs/science/paper_table_long.json")
    p.add_argument("--figures", default="docs/science")
    args = parser.parse_args(argv)
    if args.cmd == "export":
        export(args.home, Path(args.out))
    elif args.cmd == "embed":
        embed(Path(args.data), Path(args.data) / "minilm", args.limit)
    elif args.cmd == "train":
        train(args)
    else:
        report(Path(args.results), Path(args.long) if args.long else None, Path(args.figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
