#!/usr/bin/env bash
# The checks that keep the code in shape, in seconds: lint, format, the import layers, the docs site.
# Each runs and is reported; the script fails if any failed. `make check` and scripts/test.sh run it.
# Usage: scripts/check.sh            (tools from .venv/bin; set KDGRID_BIN to use another bin directory)
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${KDGRID_BIN:-.venv/bin}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
export NO_MKDOCS_2_WARNING=1  # material's notice about MkDocs 2.0, printed on every build
failed=()
check() {
  echo "[check] $*"
  "$bin/$1" "${@:2}" || failed+=("$*")
}
check ruff check .
check ruff format --check .
check lint-imports --no-cache
check mkdocs build --strict --quiet --site-dir "$site"
if [ ${#failed[@]} -gt 0 ]; then
  printf '[check] FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "[check] all passed"
