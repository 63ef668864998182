"""Compile every Triton kernel ahead of time for a GPU architecture, without a GPU, and
report each one's registers, shared memory and spills (from the cubin, by the
cuobjdump that ships in the triton wheel).

    python -m sae.bench aot [--arch 90 --json]

Covers fp32 and bf16 inputs and each launch shape the dispatcher in
``sae.kernels.triton_ops`` can choose. Needs the real compiler: run it with
TRITON_INTERPRET unset (under the interpreter kernels are not compiled).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path


def _cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def _kernels(T, dtype: str, block_d: int) -> dict:
    f, i = f"*{dtype}", "*i64"
    return {
        "gather_sum": (
            T._gather_sum_kernel,
            {"idx_ptr": i, "val_ptr": f, "table_ptr": f, "bias_ptr": "*fp32", "out_ptr": "*fp32",
             "k": "i32", "d": "i32", "HAS_BIAS": "constexpr", "BLOCK_K": "constexpr",
             "BLOCK_D": "constexpr"},
            [{"HAS_BIAS": b, "BLOCK_K": T.BLOCK_K_MAX, "BLOCK_D": block_d} for b in (True, False)],
        ),
        "gather_dot": (
            T._gather_dot_kernel,
            {"idx_ptr": i, "table_ptr": f, "vec_ptr": f, "out_ptr": "*fp32", "k": "i32",
             "d": "i32", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr"},
            [{"BLOCK_K": T.BLOCK_K_MAX, "BLOCK_D": block_d}],
        ),
        "segment_sum": (
            T._segment_sum_kernel,
            {"order_ptr": i, "offsets_ptr": i, "w_ptr": f, "rows_ptr": f, "out_ptr": "*fp32",
             "wsum_ptr": "*fp32", "k": "i32", "d": "i32", "HAS_WSUM": "constexpr",
             "BLOCK_E": "constexpr", "BLOCK_D": "constexpr"},
            [{"HAS_WSUM": w, "BLOCK_E": T.BLOCK_E, "BLOCK_D": block_d} for w in (True, False)],
        ),
    }  # fmt: skip


def _resources(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(_cuobjdump()), "--dump-resource-usage", f.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{out}")
    return dict(zip(("registers", "stack", "shared", "local"), map(int, m.groups()), strict=True))


def compile_all(arch: int) -> list[dict]:
    """One row per (kernel, dtype, launch shape): resources of its cubin for sm_{arch}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sae.kernels import triton_ops as T

    rows = []
    # BLOCK_D_MAX serves any d >= 128 (384, 768, 1536); 16 is the smallest it picks
    for dtype in ("fp32", "bf16"):
        for block_d in sorted({T.BLOCK_D_MAX, 16}, reverse=True):
            for name, (fn, sig, variants) in _kernels(T, dtype, block_d).items():
                for consts in variants:
                    warps = T.SEGMENT_WARPS if name == "segment_sum" else T.GATHER_WARPS
                    compiled = triton.compile(
                        ASTSource(fn=fn, signature=sig, constexprs=consts),
                        target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": warps},
                    )
                    rows.append({"kernel": name, "dtype": dtype, "arch": arch,
                                 "warps": warps, "shape": consts,
                                 **_resources(compiled.asm["cubin"])})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="80: A100, 90: H100/H200")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    a = p.parse_args(argv)
    rows = compile_all(a.arch)
    if a.json:
        print(json.dumps(rows))
        return rows
    print(f"sm_{a.arch}: kernel, input dtype, launch shape, warps, registers/thread, "
          "shared bytes, spills")  # fmt: skip
    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        spills = r["local"] + r["stack"]
        print(f"  {r['kernel']:<12}{r['dtype']:<6}{shape:<40}{r['warps']:>3}{r['registers']:>5}"
              f"{r['shared']:>7}{spills:>6}")  # fmt: skip
    return rows
