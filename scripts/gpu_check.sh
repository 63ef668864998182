#!/usr/bin/env bash
# The prepared GPU check (see scripts/gpu_check.py): run it first on a lent GPU machine,
# as that machine is (its own python3 with torch and triton; nothing is installed).
#   bash scripts/gpu_check.sh                 # writes gpu_check.json and gpu_check.log to $OUT
#   bash scripts/gpu_check.sh --dry-run       # toy sizes on the CPU (the tests run this)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
for arg in "$@"; do
  # Without a GPU, Triton can only run through its interpreter.
  [ "$arg" = --dry-run ] && export TRITON_INTERPRET=1
done
"$PYTHON" scripts/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
