#!/usr/bin/env bash
# Refresh requirements/lock.txt: install kdgrid[test] from pyproject.toml's ranges alone (the newest
# releases that fit) into a fresh temporary venv and write its `pip freeze` as the lock.
# Usage: scripts/lock.sh        (downloads the whole stack, torch included; then run `make test`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
echo "[lock] pip install -e .[test] from the ranges of pyproject.toml into $tmp/venv"
"$tmp/venv/bin/python" -m pip install -q -e ".[test]"
"$tmp/venv/bin/python" -m pip check
{
  sed -n '/^#/p' requirements/lock.txt   # keep the header
  # --all: torch needs setuptools at run time, and plain `pip freeze` leaves it out; pip itself stays free
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -viE '^(#|-e |kdgrid==|pip==)' | sort -f
} > "$tmp/lock.txt"
mv "$tmp/lock.txt" requirements/lock.txt
echo "[lock] wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages, $("$tmp/venv/bin/python" --version))"
