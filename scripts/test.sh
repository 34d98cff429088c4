#!/usr/bin/env bash
# The test command: install, run the checks (scripts/check.sh: ruff, import layers, the docs site), start a
# real single-node Slurm when we can (root + ../shared/ci), run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
scripts/check.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
slurm_up=../shared/ci/slurm_up.sh
if [ "$(id -u)" = 0 ] && [ -x "$(command -v bash)" ] && [ -f "$slurm_up" ] && [ "${KDGRID_SLURM:-1}" = 1 ]; then
  bash "$slurm_up"
  trap 'bash ../shared/ci/slurm_down.sh >/dev/null 2>&1 || true' EXIT
elif [ "${KDGRID_REQUIRE_SLURM:-0}" = 1 ]; then
  echo "[test] KDGRID_REQUIRE_SLURM=1 but cannot start Slurm (needs root and $slurm_up): the Slurm tests will fail" >&2
fi
# The heavy tests (minutes of CPU each: the Ray and Slurm chaos tests) run with KDGRID_HEAVY=1 (`make test-all`).
heavy=(-m "not heavy")
[ "${KDGRID_HEAVY:-0}" = 1 ] && heavy=()
# Two pytest workers (pytest-xdist): a module stays on one worker, the Ray and Slurm modules share one
# (tests/conftest.py's scheduler). KDGRID_TEST_WORKERS=0 runs the tests in this process.
workers=(-n "${KDGRID_TEST_WORKERS:-2}")
.venv/bin/python -m pytest -q --durations=25 "${workers[@]}" "${heavy[@]}" "$@"
