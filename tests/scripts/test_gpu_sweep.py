"""The GPU sweep script runs end to end on the CPU (packages already importable, a tiny
grid), so it is ready for the next session that has a GPU machine."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _wheel(folder: Path, name: str) -> None:
    """A minimal pure-Python wheel holding module ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-0.1.dist-info"
    files = {
        f"{name}.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-0.1-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def _run(args, tmp_path, **env):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, **env)
    return subprocess.run(
        ["bash", "scripts/gpu_sweep.sh", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_wheels_in_several_batches_land_in_one_reused_folder(tmp_path):
    site = tmp_path / "site"
    _wheel(tmp_path / "batch1", "sae_probe_one")
    _wheel(tmp_path / "batch2", "sae_probe_two")
    for batch in ("batch1", "batch2"):
        proc = _run(["--wheels", str(tmp_path / batch), "--packages-only"], tmp_path,
                    SAE_GPU_SITE=str(site))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "sae_probe_one.py").is_file() and (site / "sae_probe_two.py").is_file()
    report = json.loads((tmp_path / "out" / "gpu_sweep.json").read_text())
    assert report["packages"]["missing"] == [] and report["packages"]["site_mb"] > 0
    proc = _run(["--wheels", str(tmp_path / "empty"), "--packages-only"], tmp_path)
    assert proc.returncode == 2 and "no wheels in" in proc.stdout


@pytest.mark.slow
def test_the_dry_run_sweeps_through_prefect_ray_and_mlflow(tmp_path, cs_lg_head):
    proc = _run(["--source", str(cs_lg_head), "--dry-run"], tmp_path)
    out = tmp_path / "out"
    report = json.loads((out / "gpu_sweep.json").read_text())
    log = (out / "sweep.log").read_text() if (out / "sweep.log").exists() else ""
    assert report["sweep"]["returncode"] == 0, log[-3000:]
    cells = report["runs"]["cells"]
    assert len(cells) == 2, cells  # k 4, 8 x n 64
    # Every cell's run records the device it trained on (the tag of its pack's attempt).
    assert report["runs"]["devices_recorded"], report["runs"]
    assert proc.returncode == 0 and report["status"] == "ok", proc.stdout
    assert all(d.startswith("cpu (") for d in report["runs"]["cells"].values()), report["runs"]
    assert report["dry_run"] is True
