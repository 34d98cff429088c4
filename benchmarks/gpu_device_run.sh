#!/usr/bin/env bash
# The GPU measurement in one call, for a session that is lent a GPU through the device tool:
#     run(command="bash benchmarks/gpu_device_run.sh", timeout_s=600)
# It needs only the machine's own python3 with torch and timm (no mlflow, pydantic, ray, no registry)
# and writes env.txt, precision.txt/.json, bench_gpu.txt and bench_gpu.json under $OUT (or /tmp/kdgrid-gpu elsewhere).
# First a short check of the engine's fp16 AMP (autocast + GradScaler) and bf16 steps on the device
# (benchmarks/precision_check.py, well under a minute); then the benchmark, sized (not yet measured on a GPU) to
# finish in < 8 min (each timed section time-boxed, compile last); the timeouts keep what was printed if not.
# BENCH_ARGS replaces --compile (BENCH_ARGS=--cpu-tiny tries the script on a machine without a GPU).
set -uo pipefail
OUT=${OUT:-/tmp/kdgrid-gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/kdgrid-inductor
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import sys, torch, timm; print('python', sys.version.split()[0], '| torch', torch.__version__, '| timm', timm.__version__, '| cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"
timeout 90 "$PY" -m benchmarks.precision_check --json "$OUT/precision.json" 2>&1 | tee "$OUT/precision.txt"
prc=${PIPESTATUS[0]}
echo "precision_check exit status: $prc" | tee -a "$OUT/env.txt"
timeout 480 "$PY" -m benchmarks.bench_gpu ${BENCH_ARGS:---compile} --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
rc=${PIPESTATUS[0]}
echo "bench_gpu exit status: $rc" | tee -a "$OUT/env.txt"
[ "$rc" -eq 0 ] && rc=$prc
exit "$rc"
