"""The prepared GPU check: everything a short lease on a GPU machine should measure, in one call.

    PYTHONPATH=. python3 scripts/gpu_check.py --out DIR [--budget-s 420] [--dry-run]

Needs torch (and triton on CUDA) only: no Prefect, Ray or MLflow, so it runs on a bare
GPU machine with nothing installed. Sections, in order of value; each one's result
goes into DIR/gpu_check.json as soon as it ends, so a run cut short still reports:

  env       device, versions, driver
  pytest    ``pytest -m gpu tests/sae``
  parity    each Triton kernel against the torch ops and a float64 reference on the
            device (values, autograd gradients of a whole SAE step, determinism),
            outputs poisoned with NaN first so an unwritten element fails
  kernels   the sparse-op bench at d=1536 (GB/s, % of peak bandwidth)
  tune      the sparse ops under other launch shapes (block sizes, warps)
  step      one step of one cell (Triton vs torch ops vs dense vs encoder GEMM),
            10% of latents dead so AuxK runs
  profile   where a step's device time goes (torch.profiler), and what dead latents cost
  grid      one epoch of the 20-cell grid over 272k x 1536 (fused vs one by one vs
            the summed encoder GEMMs), bf16 then fp32 compute

A section that would not fit in what is left of ``--budget-s`` is skipped and says so.
``--dry-run`` runs every section at toy sizes on the CPU (Triton through its
interpreter when TRITON_INTERPRET=1), which is how the tests keep this script alive.
Expected on an H100: about 4-5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from sae.bench import grid, kernels, step
from sae.bench.timing import device_name, median_seconds, sync
from sae.config import SAEConfig
from sae.kernels import forced_backend, torch_ops
from sae.model import TopKSAE

# Toy sizes for --dry-run; full sizes where the issue asks for them.
FULL = {
    "parity_shapes": [(4096, 32, 12288, 1536), (1024, 128, 3072, 1536), (257, 17, 1000, 384),
                      (64, 1, 50, 100), (3, 200, 64, 1536)],
    "kernels": {"d": 1536, "ns": [3072, 12288], "ks": [16, 32, 128], "batch": 4096, "steps": 20},
    "step": {"d": 1536, "n": 12288, "k": 32, "batch": 4096, "steps": 20, "dead": 0.1},
    "grid": {"d": 1536, "rows": 272_000, "batch": 4096, "ks": [16, 32, 64, 128],
             "ns": [3072, 4608, 6144, 9216, 12288]},
    "grid_cost_s": 90.0,
    "profile_ks": [32, 128],
    "tune": {"batch": 4096, "d": 1536, "n": 12288, "ks": [32, 96, 384], "steps": 20, "warmup": 3,
             "configs": [(32, 16, 128, 8, 4), (32, 16, 128, 4, 8), (64, 16, 128, 8, 4),
                         (32, 16, 256, 8, 8), (16, 16, 128, 4, 4)]},
}  # fmt: skip
DRY = {
    "parity_shapes": [(6, 5, 23, 24), (3, 1, 7, 16)],
    "kernels": {"d": 16, "ns": [32], "ks": [3], "batch": 8, "steps": 1},
    "step": {"d": 16, "n": 64, "k": 4, "batch": 32, "steps": 2, "dead": 0.1},
    "grid": {"d": 16, "rows": 300, "batch": 64, "ks": [2, 4], "ns": [16, 32]},
    "grid_cost_s": 0.0,
    "profile_ks": [4],
    "tune": {
        "batch": 8,
        "d": 16,
        "n": 32,
        "ks": [3],
        "steps": 1,
        "warmup": 0,
        "configs": [(16, 8, 16, 4, 4)],
    },
}


# ----------------------------------------------------------------------------- sections
def env_section(device: torch.device, sizes: dict) -> dict:
    out = {
        "device": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out |= {"sm": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                "memory_gib": round(p.total_memory / 2**30, 1)}  # fmt: skip
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
             "--format=csv,noheader"], capture_output=True, text=True, check=False,
        )  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip()
    return out


def pytest_section(device: torch.device, sizes: dict, path: str = "tests/sae") -> dict:
    env = dict(os.environ)
    if device.type == "cuda":
        env.pop("TRITON_INTERPRET", None)  # the real compiler, on the real device
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    return {"returncode": proc.returncode, "tail": tail, "ok": proc.returncode == 0}


def _poison(device: torch.device, nbytes: int) -> None:
    """Fill soon-to-be-reused allocator blocks with NaN: an element a kernel forgets to
    write then shows as NaN instead of a lucky zero."""
    if device.type == "cuda":
        torch.full((nbytes // 4 + 1,), float("nan"), device=device)
        # freed back to the caching allocator; the next torch.empty reuses the block


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _triton_ops():
    from sae.kernels import triton_ops

    return triton_ops


def parity_section(device: torch.device, sizes: dict) -> dict:
    """Every op, both backends, against a float64 dense reference on the same inputs."""
    tri = _triton_ops()
    g = torch.Generator(device=device)
    rows, worst = [], {"triton": 0.0, "torch": 0.0}
    for i, (B, k, n, d) in enumerate(sizes["parity_shapes"]):
        for dtype in (torch.float32, torch.bfloat16):
            g.manual_seed(1000 + i)  # fresh inputs per shape
            idx = torch.randint(0, n, (B, k), device=device, generator=g)
            idx[0, -1] = idx[0, 0]  # a repeated latent within one sample
            vals = torch.rand(B, k, device=device, generator=g).to(dtype)
            table = torch.randn(n, d, device=device, generator=g).to(dtype)
            vec = torch.randn(B, d, device=device, generator=g).to(dtype)
            bias = torch.randn(d, device=device, generator=g)
            codes = torch.zeros(B, n, device=device, dtype=torch.float64)
            codes.scatter_add_(1, idx, vals.double())
            T, V = table.double(), vec.double()
            refs = {
                "gather_weighted_sum": codes @ T + bias.double(),
                "gather_dot": (V @ T.T).gather(1, idx),
                "segment_sum": codes.T @ V,
                "segment_wsum": codes.sum(0),
            }
            for name, ops in (("triton", tri), ("torch", torch_ops)):
                _poison(device, 4 * max(B * d, n * d))
                got = {
                    "gather_weighted_sum": ops.gather_weighted_sum(idx, vals, table, bias),
                    "gather_dot": ops.gather_dot(idx, table, vec),
                }
                _poison(device, 4 * n * d)
                seg, wsum = ops.segment_sum(idx, vals, vec, n, with_weight_sum=True)
                got |= {"segment_sum": seg, "segment_wsum": wsum}
                for op, ref in refs.items():
                    err = _rel(got[op], ref)
                    if dtype == torch.float32 or name == "triton":
                        worst[name] = max(worst[name], err)
                    rows.append({"shape": [B, k, n, d], "dtype": str(dtype).split(".")[-1],
                                 "impl": name, "op": op, "rel_err": err})  # fmt: skip
    # Deterministic: the same inputs give the same bits (resume replays exactly).
    B, k, n, d = sizes["parity_shapes"][0]
    idx = torch.randint(0, n, (B, k), device=device, generator=g.manual_seed(7))
    w = torch.rand(B, k, device=device, generator=g)
    r = torch.randn(B, d, device=device, generator=g)
    a, _ = tri.segment_sum(idx, w, r, n)
    b, _ = tri.segment_sum(idx, w, r, n)
    deterministic = bool(torch.equal(a, b))
    grads = _step_grad_parity(device, sizes)
    # Triton accumulates in float32 whatever the input dtype, so it must agree with the
    # float64 reference to float32 rounding; the torch fallback adds in bf16 for bf16
    # inputs (~1e-3), so only its float32 rows are held to that bound.
    ok = max(worst.values()) < 1e-5 and deterministic and grads["max_rel_err"] < 1e-4
    return {"ok": ok, "max_rel_err": worst, "deterministic": deterministic,
            "step_grads": grads, "rows": rows}  # fmt: skip


def _step_grad_parity(device: torch.device, sizes: dict) -> dict:
    """A whole SAE forward/backward (AuxK on) with Triton vs with the torch ops."""
    B, k, n, d = sizes["parity_shapes"][0]
    cfg = SAEConfig(d_in=d, n_latents=n, k=k)
    x = torch.randn(B, d, device=device, generator=torch.Generator(device).manual_seed(3))
    grads = {}
    for name in ("triton", "torch"):
        with forced_backend(name):
            model = TopKSAE(cfg, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                model.samples_since_fired[: n // 10] = cfg.dead_threshold + 1
            out = model(x)
            out.loss.backward()
        grads[name] = {p: t.grad for p, t in model.named_parameters()} | {"loss": out.loss}
    errs = {p: _rel(grads["triton"][p], grads["torch"][p]) for p in grads["torch"]}
    return {"rel_err": errs, "max_rel_err": max(errs.values())}


def kernels_section(device: torch.device, sizes: dict) -> dict:
    s = sizes["kernels"]
    rows = kernels.measure(s["d"], s["ns"], s["ks"], s["batch"], ["float32", "bfloat16"],
                           s["steps"], device)  # fmt: skip
    for r in rows:
        pct = f"{r['pct_peak']:6.1f}%" if r["pct_peak"] is not None else "      -"
        head = f"  {r['op']:<15}{r['dtype']:<9}n={r['n']:<6}k={r['k']:<4}{r['impl']:<7}"
        print(f"{head}{r['ms']:8.3f} ms {r['gb_s']:8.1f} GB/s {pct} x{r['x_dense']:.2f} vs dense")
    return {"d": s["d"], "batch": s["batch"], "rows": rows}


def tune_section(device: torch.device, sizes: dict) -> dict:
    """The sparse ops' launch shapes, timed on this device (the shipped ones come first)."""
    tri = _triton_ops()
    names = ("BLOCK_K_MAX", "BLOCK_E", "BLOCK_D_MAX", "GATHER_WARPS", "SEGMENT_WARPS")
    shipped = tuple(getattr(tri, name) for name in names)
    s = sizes["tune"]
    B, d, n = s["batch"], s["d"], s["n"]
    g = torch.Generator(device=device).manual_seed(5)
    W = torch.randn(n, d, device=device, generator=g)
    grad = torch.randn(B, d, device=device, generator=g)
    rows = []
    try:
        for cfg in [shipped, *s["configs"]]:
            for name, value in zip(names, cfg, strict=True):
                setattr(tri, name, value)
            row = {name.lower(): value for name, value in zip(names, cfg, strict=True)}
            for k in s["ks"]:
                idx = torch.randint(0, n, (B, k), device=device, generator=g)
                v = torch.rand(B, k, device=device, generator=g)
                dec = kernels._decode_fwd_bwd(tri, idx, v, W, grad, n)
                enc = kernels._encoder_bwd(tri, idx, v, W, grad, n)
                row[f"decode_k{k}_ms"] = median_seconds(dec, s["steps"], s["warmup"], device) * 1e3
                row[f"encoder_k{k}_ms"] = median_seconds(enc, s["steps"], s["warmup"], device) * 1e3
            rows.append(row)
            print("  " + "  ".join(f"{key} {v:.3f}" if isinstance(v, float) else f"{key} {v}"
                                   for key, v in row.items()))  # fmt: skip
    finally:
        for name, value in zip(names, shipped, strict=True):
            setattr(tri, name, value)
    total = [sum(v for key, v in r.items() if key.endswith("_ms")) for r in rows]
    best = rows[total.index(min(total))]
    return {"rows": rows, "best": best, "shipped_is_best": best is rows[0]}


def step_section(device: torch.device, sizes: dict) -> dict:
    s = sizes["step"]
    out = {"shape": s}
    for cd in ("float32", "bfloat16"):
        r = step.run(s["d"], s["n"], s["k"], s["batch"], s["steps"], device=device,
                     dead=s["dead"], compute_dtype=cd)  # fmt: skip
        out[cd] = {key: v * 1e3 for key, v in r.items()} | {"x_floor": r["sparse"] / r["gemm"]}
        print(f"  {cd}: " + "  ".join(f"{key} {v * 1e3:.2f} ms" for key, v in r.items())
              + f"  (library / GEMM {r['sparse'] / r['gemm']:.2f}x)")  # fmt: skip
    return out


def _cell_step(device, d, n, k, batch, dead, compute_dtype):
    cfg = SAEConfig(d_in=d, n_latents=n, k=k)
    model = TopKSAE(cfg, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        model.samples_since_fired[: int(dead * n)] = cfg.dead_threshold + 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, d, device=device, generator=torch.Generator(device).manual_seed(0))
    return step._train_step(model, opt, x / x.norm(dim=1, keepdim=True), False, compute_dtype)


def profile_section(device: torch.device, sizes: dict) -> dict:
    """Where a cell's step spends its device time, and what dead latents (AuxK) cost."""
    from torch.profiler import ProfilerActivity, profile

    s = sizes["step"]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {}
    for k in sizes["profile_ks"]:
        fn = _cell_step(device, s["d"], s["n"], k, s["batch"], s["dead"], torch.bfloat16)
        for _ in range(3):
            fn()
        with profile(activities=acts) as prof:
            for _ in range(5):
                fn()
            sync(device)
        events = prof.key_averages()
        attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:14]
        total = sum(getattr(e, attr) for e in events) / 5 / 1e3
        rows = [{"name": e.key[:60], "ms_per_step": getattr(e, attr) / 5 / 1e3,
                 "calls_per_step": e.count / 5} for e in top]  # fmt: skip
        print(f"  k={k} n={s['n']} bf16, device ms per step {total:.2f}:")
        for r in rows:
            print(f"    {r['ms_per_step']:8.3f} ms  x{r['calls_per_step']:<5.0f} {r['name']}")
        variants = {
            f"dead_{dead:.0%}": median_seconds(
                _cell_step(device, s["d"], s["n"], k, s["batch"], dead, torch.bfloat16),
                s["steps"], device=device,
            ) * 1e3
            for dead in (0.0, s["dead"], 0.5)
        }  # fmt: skip
        print(
            "    step ms with dead latents: "
            + "  ".join(f"{key} {v:.2f}" for key, v in variants.items())
        )
        out[f"k{k}"] = {"device_ms_per_step": total, "top": rows, "variants_ms": variants}
    return out


def grid_section(device: torch.device, sizes: dict, deadline: float) -> dict:
    s = sizes["grid"]
    out = {}
    for cd in ("bfloat16", "float32"):
        left = deadline - time.monotonic()
        if left < sizes["grid_cost_s"]:
            out[cd] = {"skipped": f"{left:.0f} s left of the budget"}
            print(f"  {cd}: skipped, {left:.0f} s left")
            continue
        r = grid.measure(s["d"], s["rows"], s["batch"], s["ks"], s["ns"], cd, device)
        r["fused_x_floor"] = r["fused"] / r["floor"]
        r["one_by_one_x_floor"] = r["one_by_one"] / r["floor"]
        r["paper_grid_50_epochs_min"] = 50 * r["fused"] / 60
        out[cd] = r
        print(f"  {cd}: fused {r['fused']:.2f} s ({r['fused_x_floor']:.2f}x floor), one by one "
              f"{r['one_by_one']:.2f} s, floor {r['floor']:.2f} s; 50 epochs fused "
              f"~{r['paper_grid_50_epochs_min']:.1f} min")  # fmt: skip
    return out


# ----------------------------------------------------------------------------- runner
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--pytest-path", default="tests/sae", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    deadline = time.monotonic() + a.budget_s
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda")
    sizes = DRY if device.type == "cpu" else FULL
    skip = {s for s in a.skip.split(",") if s}
    sections = [
        ("env", env_section),
        ("pytest", lambda dev, sz: pytest_section(dev, sz, a.pytest_path)),
        ("parity", parity_section),
        ("kernels", kernels_section), ("tune", tune_section), ("step", step_section),
        ("profile", profile_section),
        ("grid", lambda dev, sz: grid_section(dev, sz, deadline)),
    ]  # fmt: skip
    report: dict = {"dry_run": device.type == "cpu", "sections": {}}
    for name, fn in sections:
        if name in skip:
            continue
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            result = fn(device, sizes)
            status = "failed" if result.get("ok") is False else "ok"
        except Exception:  # a broken section must not cost the others their lease time
            result, status = {"traceback": traceback.format_exc()}, "error"
            print(result["traceback"])
        result |= {"status": status, "seconds": round(time.monotonic() - t0, 2)}
        report["sections"][name] = result
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"== {name}: {status} in {result['seconds']:.1f} s", flush=True)
    bad = [n for n, r in report["sections"].items() if r["status"] != "ok"]
    print("gpu check:", "all sections ok" if not bad else f"not ok: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
