"""The prepared GPU check runs end to end on the CPU at toy sizes, so it cannot rot
between the rare sessions that have a GPU machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_dry_run_fills_every_section(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--skip", "pytest"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert report["dry_run"] is True
    assert list(sections) == ["env", "parity", "kernels", "tune", "step", "profile", "grid"]
    assert all(s["status"] == "ok" for s in sections.values()), sections
    # the Triton kernels ran (through the interpreter) and were compared, op by op
    impls = {(r["impl"], r["op"]) for r in sections["parity"]["rows"]}
    ops = {"gather_weighted_sum", "gather_dot", "segment_sum", "segment_wsum"}
    assert impls == {(i, o) for i in ("triton", "torch") for o in ops}
    assert sections["parity"]["deterministic"] is True
    assert sections["parity"]["max_rel_err"]["triton"] < 1e-5
    assert {"sparse", "dense", "gemm"} <= set(sections["step"]["float32"])
    assert sections["grid"]["bfloat16"]["fused"] > 0
    assert len(sections["tune"]["rows"]) == 2 and "decode_k3_ms" in sections["tune"]["best"]
    assert sections["profile"]["k4"]["top"], "the profile lists where the time goes"
    log = (tmp_path / "gpu_check.log").read_text()
    assert "gpu check: all sections ok" in log


def test_a_failing_section_is_reported_and_fails_the_check(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    # `pytest -m gpu` on a path with no tests exits 4/5: the section must say so
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--dry-run", "--out", str(tmp_path),
         "--skip", "parity,kernels,tune,step,profile,grid", "--pytest-path", "tests/no_such_dir"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert sections["pytest"]["status"] == "failed"
    assert "not ok: pytest" in proc.stdout
