"""The pipeline on a GPU machine: a real ``sae sweep`` through Prefect, Ray and MLflow.

    PYTHONPATH=.:SITE python3 scripts/gpu_sweep.py --out DIR --source FILE [--dry-run]

Run by ``scripts/gpu_sweep.sh``, which first installs the packages the machine lacks
from the wheels it is given. Steps, each recorded in DIR/gpu_sweep.json:

  packages  which of the pipeline's packages import, with the installed site's size
  sweep     ``sae sweep DOMAIN --source FILE --limit N --k .. --n .. --features`` with
            SAE_HOME under DIR: the sweep starts its own Prefect server, a local Ray
            (which sees the machine's GPU) and MLflow on sqlite, as on a laptop
  runs      each cell's MLflow run and the device it records (tag or param ``device``)

Without Ray (or prefect-ray) the sweep flow cannot import: the report says which package
is missing and stops there (the flow has no in-process pack runner yet).
``--dry-run``: the CPU, a 2 x 1 grid, 1 epoch, what the tests run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("prefect", "prefect_ray", "ray", "mlflow", "polars", "s3fs", "typer", "pydantic")
"""What ``sae sweep`` imports beyond torch and triton (the GPU machines' image has those)."""
RAY = ("ray", "prefect_ray")

GRID = {"full": {"k": "32,64", "n": "3072", "epochs": 2, "batch": 256, "limit": 2000},
        "dry": {"k": "4,8", "n": "64", "epochs": 1, "batch": 32, "limit": 120}}  # fmt: skip


def _site_mb(site: str) -> float | None:
    path = Path(site)
    if not site or not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def packages(site: str) -> dict:
    found = {name: importlib.util.find_spec(name) is not None for name in PACKAGES}
    return {"found": found, "missing": [p for p, ok in found.items() if not ok],
            "site": site, "site_mb": _site_mb(site)}  # fmt: skip


def sweep(args, home: Path, grid: dict) -> dict:
    env = dict(os.environ, SAE_HOME=str(home), PYTHONUNBUFFERED="1")
    env["SAE_DEVICE"] = "cpu" if args.dry_run else "auto"
    argv = [sys.executable, "-m", "flows.cli", "sweep", args.domain, "--source", args.source,
            "--limit", str(grid["limit"]), "--k", grid["k"], "--n", grid["n"],
            "--epochs", str(grid["epochs"]), "--batch-size", str(grid["batch"]),
            "--lr", "1e-3", "--features"]  # fmt: skip
    t0 = time.monotonic()
    with open(Path(args.out) / "sweep.log", "w") as log:
        rc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    return {"argv": argv[2:], "returncode": rc.returncode, "seconds": time.monotonic() - t0}


def runs(home: Path, domain: str) -> dict:
    """Each cell run of the domain's experiment and the device it records."""
    import mlflow

    from infra.settings import Settings
    from infra.tracking import EXPERIMENT_PREFIX

    client = mlflow.MlflowClient(Settings(home=home).tracking_uri)
    exp = client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}{domain}")
    if exp is None:
        return {"cells": {}, "devices_recorded": False}
    cells = {}
    for run in client.search_runs([exp.experiment_id]):
        if "mlflow.parentRunId" not in run.data.tags:
            continue  # the sweep's own run
        device = run.data.tags.get("device") or run.data.params.get("device")
        cells[run.data.tags.get("mlflow.runName", run.info.run_id)] = device
    return {"cells": cells, "devices_recorded": bool(cells) and all(cells.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--source", default="", help="arXiv records to ingest (.jsonl.gz)")
    p.add_argument("--domain", default="cs.LG")
    p.add_argument("--site", default="", help="the folder the wheels went into")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--packages-only", action="store_true", help="stop after the packages step")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"dry_run": args.dry_run}

    def say(status: str, message: str) -> None:
        report["status"], report["message"] = status, message
        (out / "gpu_sweep.json").write_text(json.dumps(report, indent=2))
        print(f"gpu sweep: {message}", flush=True)

    report["packages"] = packages(args.site)
    missing = report["packages"]["missing"]
    if missing:
        ray_only = set(missing) <= set(RAY)
        why = ("the sweep flow imports prefect_ray at its top: no flow without Ray. Ray's "
               "wheel (76 MiB) is over a call's 64 MiB: slim it first with `python "
               "scripts/slim_wheel.py RAY.whl --drop ray/jars/ --out DIR` (45 MiB)"
               if ray_only else
               "install them: bash scripts/gpu_sweep.sh --wheels DIR")  # fmt: skip
        say(
            "blocked",
            f"missing packages {missing} (site {report['packages']['site_mb']} MB); {why}",
        )
        return 2
    if args.packages_only:
        say("ok", f"every package imports (site {report['packages']['site_mb']} MB)")
        return 0
    if not args.source:
        p.error("--source is required for the sweep")
    home = out / "home"
    report["sweep"] = sweep(args, home, GRID["dry" if args.dry_run else "full"])
    if report["sweep"]["returncode"] != 0:
        say("failed", f"sae sweep exited {report['sweep']['returncode']}: see {out / 'sweep.log'}")
        return 1
    report["runs"] = runs(home, args.domain)
    cells = report["runs"]["cells"]
    if not cells:
        say("failed", "the sweep ran but MLflow holds no cell run")
        return 1
    if not report["runs"]["devices_recorded"]:
        say("partial", f"{len(cells)} cell runs in MLflow; not all record their device: {cells}")
        return 3
    say("ok", f"{len(cells)} cell runs in MLflow, devices {sorted(set(cells.values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
