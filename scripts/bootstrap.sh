#!/usr/bin/env bash
# Install what kdgrid needs on a fresh Debian-like machine: the Fashion-MNIST package (and, for the
# tests, Chromium) when we may use apt, then a virtual environment with the pinned packages.
# Usage: scripts/bootstrap.sh [run|test]      (idempotent; a second call takes seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-run}
PY=${PYTHON:-python3}

apt_pkgs="dataset-fashion-mnist"
[ "$what" = test ] && apt_pkgs="$apt_pkgs chromium"
missing=""
for p in $apt_pkgs; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "[bootstrap] not root: please run  sudo apt-get install$missing" >&2
  fi
fi

stamp=.venv/.kdgrid-$what-$(sha256sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  extra=""; [ "$what" = test ] && extra="[test]"
  echo "[bootstrap] pip install -e .$extra (torch, timm, ray, mlflow, ... pinned in pyproject.toml)"
  .venv/bin/python -m pip install -q -e ".$extra"
  touch "$stamp"
fi
