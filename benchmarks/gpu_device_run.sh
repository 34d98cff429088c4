#!/usr/bin/env bash
# The GPU measurement in one call, for a session that is lent a GPU through the device tool:
#     run(command="bash benchmarks/gpu_device_run.sh", timeout_s=600)
# It needs only the machine's own python3 with torch and timm (no mlflow, pydantic, ray, no registry)
# and writes env.txt, bench_gpu.txt and bench_gpu.json under $OUT (or /tmp/kdgrid-gpu elsewhere).
# The benchmark is sized (not yet measured on a GPU) to finish in < 8 min (each timed section time-boxed, compile
# last); the timeout below keeps what was printed if it does not. BENCH_ARGS replaces --compile
# (BENCH_ARGS=--cpu-tiny tries the script on a machine without a GPU).
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
timeout 540 "$PY" -m benchmarks.bench_gpu ${BENCH_ARGS:---compile} --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
rc=${PIPESTATUS[0]}
echo "bench_gpu exit status: $rc" | tee -a "$OUT/env.txt"
exit "$rc"
