"""The scale rehearsal: ``python -m flows.scale [--sizes 100k,300k] [--d 384]``.

Synthetic papers (ids, short texts, real arXiv categories with cross-lists) and
clustered vectors go in through the corpus's write path and ``import_vectors``, in a
store under /tmp (deleted after unless --keep), then every stage of a sweep and its
applications but the embedder runs and is measured: wall time, peak RSS, bytes read and
written (:mod:`tasks.scale.measure` says how). Prints a markdown table with each stage's
growth with N, writes it to --table and the figures to --out (JSON, merged with what an
earlier run of other sizes left there, so one size at a time adds up to the whole
table). Progress per stage goes to stderr. Heavy: serialise it, e.g.
``flock /tmp/heavy.lock python -m flows.scale --sizes 1M``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from tasks.sweep.config import PAPER_K, PAPER_N


def parse_size(text: str) -> int:
    """``100k``, ``2.7M``, ``2000``."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    try:
        return round(float(text.rstrip("km")) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is a number with k or M, got {text!r}") from None


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.scale", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [parse_size(v) for v in s.split(",")],
        default=[100_000, 300_000],
        help="Numbers of papers, e.g. 100k,300k,1M,2.7M.",
    )
    p.add_argument("--d", type=int, default=384, help="Vector dimension.")
    p.add_argument("--grid-k", type=_ints, default=PAPER_K, help="The sweep grid's k values.")
    p.add_argument("--grid-n", type=_ints, default=PAPER_N, help="The sweep grid's n values.")
    p.add_argument(
        "--full-grid-below",
        type=parse_size,
        default=0,
        help="Train every grid cell below this N; above it, the smallest and "
        "largest n at the middle k (the full grid's time is extrapolated).",
    )
    p.add_argument("--steps", type=int, default=200, help="Training steps per cell.")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=50, help="A real sweep's, to extrapolate.")
    p.add_argument("--queries", type=int, default=200, help="Searches timed per size.")
    p.add_argument("--out", type=Path, default=Path("/tmp/scale_figures.json"))
    p.add_argument("--table", type=Path, default=Path("/tmp/scale_table.md"))
    p.add_argument("--keep", action="store_true", help="Keep the store folder under /tmp.")
    return p  # fmt: skip


def plan_for(args: argparse.Namespace, n: int):
    from tasks.scale.stages import Plan

    full = n < args.full_grid_below
    k = args.grid_k if full else [args.grid_k[len(args.grid_k) // 2]]
    ns = args.grid_n if full else sorted({min(args.grid_n), max(args.grid_n)})
    return Plan(n, args.d, k, ns, args.grid_k, args.grid_n, args.steps, args.batch_size,
                args.epochs, args.queries)  # fmt: skip


def run_size(args: argparse.Namespace, n: int) -> dict:
    from tasks.scale.stages import rehearse

    plan = plan_for(args, n)
    root = Path(tempfile.mkdtemp(prefix=f"sae-scale-{n}-", dir="/tmp"))
    try:
        costs = rehearse(plan, root)
    finally:
        if args.keep:
            print(f"[scale] store kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return {"n": n, "d": args.d, "trained_k": plan.k, "trained_n": plan.n_latents,
            "reduced_grid": plan.reduced, "steps": plan.steps, "batch_size": plan.batch_size,
            "stages": [c.as_dict() for c in costs]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    from tasks.scale.report import table

    args = parser().parse_args(argv)
    figures = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    for n in args.sizes:
        figures["runs"][f"{n}x{args.d}"] = run_size(args, n)
        args.out.write_text(json.dumps(figures, indent=1))  # after each size: a crash keeps it
    text = table(list(figures["runs"].values()))
    args.table.write_text(text + "\n")
    print(text)
    return figures


if __name__ == "__main__":
    main()
