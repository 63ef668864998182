"""Every Triton kernel compiled ahead of time for the GPUs we run on (sm_80, sm_90) by the
real compiler, on this CPU-only machine: fp32 and bf16 inputs, each launch shape the
dispatcher can choose. Fails on a compile error, a register spill, or a register count
that would cap occupancy (the table is `python -m sae.bench aot`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
# A ceiling, not a target: gather_dot at its measured-fastest shape (32 x 128, 4 warps)
# needs 168 (3 programs an SM) and beat the 48-register 16 x 128 on an H200 by ~12%.
MAX_REGISTERS = 192


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this triton wheel ships no cuobjdump")
@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_compiles_for_the_gpu_without_spills(arch):
    # A fresh process: this one runs Triton through its interpreter, which compiles nothing.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "sae.bench", "aot", "--arch", str(arch), "--json"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = {(r["kernel"], r["dtype"]) for r in rows}
    assert kernels == {
        (k, d) for k in ("gather_sum", "gather_dot", "segment_sum") for d in ("fp32", "bf16")
    }
    for r in rows:
        what = f"{r['kernel']} {r['dtype']} {r['shape']} on sm_{arch}"
        assert r["local"] == 0 and r["stack"] == 0, f"{what} spills: {r}"
        assert r["registers"] <= MAX_REGISTERS, f"{what} uses {r['registers']} registers"
