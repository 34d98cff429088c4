#!/usr/bin/env bash
# Install what kdgrid needs on a fresh Debian-like machine: the Fashion-MNIST package (and, for the
# tests, Chromium and PostgreSQL, the cluster's tracking store) when we may use apt, then a virtual
# environment with the tested set of packages (pyproject.toml's ranges, pinned by requirements/lock.txt).
# Usage: scripts/bootstrap.sh [run|test] [--system-torch]      (idempotent; a second call takes seconds)
#   --system-torch: the venv sees the site-packages of $PYTHON (a cluster module's or conda's torch) and
#   installs the rest from the ranges alone, keeping that torch; then `kdgrid check` reports each version.
#   Later calls (make reproduce, make test) keep to that mode for this .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
what=run system=0
for arg in "$@"; do
  case "$arg" in
    run|test) what=$arg ;;
    --system-torch) system=1 ;;
    *) echo "usage: scripts/bootstrap.sh [run|test] [--system-torch]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
# A venv made with --system-torch stays one: `make reproduce` then never replaces that torch with the lock's.
if [ -f .venv/pyvenv.cfg ] && grep -q '^include-system-site-packages = true' .venv/pyvenv.cfg; then system=1; fi

apt_pkgs="dataset-fashion-mnist"
[ "$what" = test ] && apt_pkgs="$apt_pkgs chromium postgresql"
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

# The stamp names what was installed: a changed range or lock installs again.
mode=locked; [ "$system" = 1 ] && mode=system
stamp=.venv/.kdgrid-$what-$mode-$(cat pyproject.toml requirements/lock.txt | sha256sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  if [ ! -x .venv/bin/python ]; then
    if [ "$system" = 1 ]; then "$PY" -m venv --system-site-packages .venv; else "$PY" -m venv .venv; fi
  elif [ "$system" = 1 ] && ! grep -q '^include-system-site-packages = true' .venv/pyvenv.cfg; then
    echo "[bootstrap] .venv was made without --system-torch: remove it (rm -r .venv) and run again" >&2
    exit 2
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  extra=""; [ "$what" = test ] && extra="[test]"
  if [ "$system" = 1 ]; then
    echo "[bootstrap] pip install -e .$extra (pyproject.toml's ranges; the torch $PY has is kept)"
    .venv/bin/python -m pip install -q -e ".$extra"
  else
    echo "[bootstrap] pip install -c requirements/lock.txt -e .$extra (torch, timm, ray, mlflow, ... as tested)"
    .venv/bin/python -m pip install -q -c requirements/lock.txt -e ".$extra"
  fi
  touch "$stamp"
fi
if [ "$system" = 1 ]; then
  .venv/bin/kdgrid check
fi
