#!/usr/bin/env bash
# Build the cluster image (docker/Dockerfile) where no image registry is reachable, run it, and time it.
# The base is Debian bookworm made by debootstrap (python3 3.11, as in the official Python image), imported
# into podman; the Dockerfile builds on it through ARG BASE. Then, inside the image, `kdgrid check` and a smoke
# table that tracks to an MLflow server on the host's 127.0.0.1, and the host reads the runs from its store.
# Slow (the first build downloads torch's CUDA wheels, several GB) and not run by CI: `make image`.
#
# Usage: docker/build_local.sh [--fresh] [--no-run]    (as root; idempotent: a second run reuses the base
#                                                        tarball, the imported base and the cached layers)
#   --fresh    build every layer again (--no-cache), to time a cold build
#   --no-run   build and time only (no MLflow server, no smoke table)
# Environment: IMAGE (default kdgrid:local), KDGRID_IMAGE_CACHE (default /var/tmp/kdgrid-image: the base
#   tarball and each run's MLflow store), HOST_VENV (default .venv: the host's mlflow), DEBIAN_MIRROR,
#   HOST_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt: the CAs pip trusts while building),
#   STORAGE_DRIVER (podman's; overlay, its default, works on ext4; vfs where overlay cannot mount).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/kdgrid:local}
BASE_IMAGE=localhost/kdgrid-base:bookworm
CACHE=${KDGRID_IMAGE_CACHE:-/var/tmp/kdgrid-image}
HOST_VENV=${HOST_VENV:-.venv}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PROBE=trainer/__init__.py # the file that gets a one-line change to time the rebuild
fresh=0 run=1 nocache=()
for arg in "$@"; do
  case "$arg" in
    --fresh) fresh=1 nocache=(--no-cache) ;;
    --no-run) run=0 ;;
    *) echo "usage: docker/build_local.sh [--fresh] [--no-run]" >&2; exit 2 ;;
  esac
done

say() { printf '[image] %s\n' "$*"; }
pm() { podman ${STORAGE_DRIVER:+--storage-driver="$STORAGE_DRIVER"} "$@"; }
now() { date +%s; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
disk() { df -h --output=avail /var/lib | tail -1 | tr -d ' '; }

[ "$(id -u)" = 0 ] || { echo "[image] run as root: debootstrap needs it, and podman keeps its images in /var/lib/containers" >&2; exit 2; }
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$run" = 0 ] || [ -x "$HOST_VENV/bin/mlflow" ] || {
  echo "[image] no $HOST_VENV/bin/mlflow for the host's tracking server: scripts/bootstrap.sh run, or set HOST_VENV" >&2
  exit 2
}
mkdir -p "$CACHE"
started=$(date '+%Y-%m-%d %H:%M %Z') load_start=$(load) disk_start=$(disk)

cleanup() {
  if [ -f "$CACHE/probe.orig" ]; then mv "$CACHE/probe.orig" "$PROBE"; fi
  if [ -n "${mlflow_pid:-}" ]; then kill -- "-$mlflow_pid" 2>/dev/null || true; fi
  if [ -n "${rootfs:-}" ]; then rm -rf "$rootfs"; fi
}
trap cleanup EXIT

# 1. The base: Debian bookworm, minimal, with python3 and venv; the tarball is kept and reused.
tarball=$CACHE/debian-bookworm-minbase.tar
if [ -s "$tarball" ]; then
  base_note="reused $tarball ($(cat "$tarball.made" 2>/dev/null || date -r "$tarball" '+made %Y-%m-%d %H:%M'))"
else
  say "debootstrap bookworm (minbase + python3, python3-venv, python3-pip, ca-certificates) from $MIRROR"
  t0=$(now)
  rootfs=$CACHE/rootfs.$$
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log"; exit 1; }
  # The official image's sources (updates and security fixes) and its fixes applied.
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$MIRROR" "$MIRROR" "$SECURITY_MIRROR" >"$rootfs/etc/apt/sources.list"
  chroot "$rootfs" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq' >>"$CACHE/debootstrap.log" 2>&1
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$rootfs"
  rootfs=""
  base_note="debootstrap $(($(now) - t0)) s"
  echo "$base_note, $(date '+%Y-%m-%d %H:%M'), load $(load)" >"$tarball.made"
fi
sum=$(sha256sum "$tarball" | cut -c1-16)
if [ "$(pm image inspect --format '{{index .Labels "kdgrid.base"}}' "$BASE_IMAGE" 2>/dev/null)" != "$sum" ]; then
  say "podman import $tarball as $BASE_IMAGE"
  pm import --quiet --change "LABEL=kdgrid.base=$sum" --change "ENV=LANG=C.UTF-8" \
    --change "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" --change 'CMD=["/bin/bash"]' \
    "$tarball" "$BASE_IMAGE" >/dev/null
  base_note="$base_note; imported"
fi
# Podman as root runs crun, which refuses hybrid cgroups (v1 beside a v2 mount), and raises a container's open
# files and processes to 1048576, which needs CAP_SYS_RESOURCE: a sandbox may have neither (this project's
# machines have neither). Then: runc, with limits below podman's own.
RUNTIME=()
if ! pm run --rm --network=host "$BASE_IMAGE" true >/dev/null 2>&1; then
  nofile=$(ulimit -Hn)
  if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
  RUNTIME=(--runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit nproc=16384:16384)
  pm run --rm --network=host "${RUNTIME[@]}" "$BASE_IMAGE" true
  say "podman's default runtime cannot start a container here: ${RUNTIME[*]}"
fi
base_size=$(pm image inspect --format '{{.Size}}' "$BASE_IMAGE" | numfmt --to=si --suffix=B)

# The host's CAs, for pip during the build only (a mount is not committed to a layer, nor keys its cache): where
# the network inspects TLS (this project's machines), pip trusts only the local CA that the host trusts.
CA=()
[ -s "$HOST_CA_BUNDLE" ] && CA=(--volume "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")

# 2. The image; `build LOG [ARGS]` times a build and lists the steps that did not come from the cache.
build() {
  local log=$CACHE/$1 t0 rc
  shift
  t0=$(now)
  set +e
  pm build --network=host "${RUNTIME[@]}" "${CA[@]}" --layers -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore \
    --build-arg BASE="$BASE_IMAGE" -t "$IMAGE" "$@" . 2>&1 | tee "$log" | { grep --line-buffered -E '^\[[0-9]+/[0-9]+\] STEP' || true; }
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 0 ] || { tail -30 "$log"; say "podman build failed ($log)"; exit 1; }
  build_s=$(($(now) - t0))
  # The steps of every stage, FROM excepted, that printed no "Using cache".
  rebuilt=$(awk '/^\[[0-9]+\/[0-9]+\] STEP/ { if (step != "" && !cached) print step; step = $0; cached = 0 }
                 /^--> Using cache/ { cached = 1 }
                 END { if (step != "" && !cached) print step }' "$log" |
    awk -F'STEP [0-9]+/[0-9]+: ' '!/FROM / { print $2 }')
  steps=$(grep -E '^\[[0-9]+/[0-9]+\] STEP [0-9]+/[0-9]+: ' "$log" | grep -vc ': FROM ' || true)
  nrebuilt=$(printf '%s' "$rebuilt" | grep -c . || true)
}

say "podman build -f docker/Dockerfile --build-arg BASE=$BASE_IMAGE -t $IMAGE ."
build build.log "${nocache[@]}"
first_s=$build_s first_n="$nrebuilt of $steps steps"
image_size=$(pm image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=si --suffix=B)
layers=$(pm history --no-trunc --format '{{.Size}}|{{.CreatedBy}}' "$IMAGE" | awk -F'|' '$1 !~ /^0 ?B$/ {
  sub(/^\/bin\/sh -c #\(nop\) /, "", $2); sub(/^\/bin\/sh -c /, "RUN ", $2); printf "    %9s  %.90s\n", $1, $2 }')

say "a one-line change in $PROBE, then podman build again"
cp -p "$PROBE" "$CACHE/probe.orig"
echo "# docker/build_local.sh: a one-line change, to time the rebuild ($(date +%s))" >>"$PROBE"
build rebuild.log
changed=$(pm image inspect --format '{{.Id}}' "$IMAGE")
mv "$CACHE/probe.orig" "$PROBE"
change_s=$build_s change_rebuilt=$rebuilt change_n="$nrebuilt of $steps steps"
say "$PROBE restored; podman build again (every layer from the cache: the image of the tree as it is)"
build cached.log
cached_s=$build_s cached_n="$nrebuilt of $steps steps"
pm rmi "$changed" >/dev/null # the changed tree's image, now untagged (the cache of the tree as it is stays)

# 3. Inside the image: kdgrid check, and the smoke table tracked to an MLflow server on the host's 127.0.0.1.
if [ "$run" = 1 ]; then
  store=$CACHE/run-$(date +%Y%m%d-%H%M%S)
  mkdir -p "$store/runs"
  chown 1000:1000 "$store/runs" # the image's user, kdgrid
  port=$("$HOST_VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  uri=http://127.0.0.1:$port
  say "mlflow server on $uri (store $store/mlflow.db)"
  MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 setsid "$HOST_VENV/bin/mlflow" server --host 127.0.0.1 --port "$port" \
    --backend-store-uri "sqlite:///$store/mlflow.db" --artifacts-destination "$store/mlartifacts" \
    >"$store/mlflow.log" 2>&1 &
  mlflow_pid=$!
  for _ in $(seq 180); do
    curl -fsS "$uri/health" >/dev/null 2>&1 && break
    kill -0 "$mlflow_pid" 2>/dev/null || { tail -20 "$store/mlflow.log"; exit 1; }
    sleep 1
  done
  curl -fsS "$uri/health" >/dev/null || { say "mlflow server did not answer"; exit 1; }

  in_image() { pm run --rm --network=host "${RUNTIME[@]}" -v "$store/runs:/runs" "$IMAGE" "$@"; }
  user=$(in_image id -un)
  say "in the image, as $user: kdgrid check"
  check_out=$(in_image kdgrid check 2>&1) || { echo "$check_out"; say "kdgrid check failed"; exit 1; }
  echo "$check_out"
  say "in the image: kdgrid reproduce --scale smoke --tables fig4 --seeds 1 --tracking-uri $uri"
  t0=$(now)
  in_image kdgrid reproduce --scale smoke --tables fig4 --seeds 1 --tracking-uri "$uri" \
    --workdir /runs/kdgrid_runs --out /runs/reports 2>&1 | tee "$store/reproduce.log"
  smoke_s=$(($(now) - t0))
  say "the host reads its store: $store/mlflow.db"
  found=$("$HOST_VENV/bin/python" - "$store/mlflow.db" <<'EOF'
import sys

from mlflow import MlflowClient

client = MlflowClient(f"sqlite:///{sys.argv[1]}")
runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
print(f"{len(runs)} runs, {sum(r.info.status == 'FINISHED' for r in runs)} FINISHED")
for r in sorted(runs, key=lambda r: r.info.start_time):
    top1 = r.data.metrics.get("val.top1")
    print(f"    {r.info.run_name:<36} {r.info.status:<9} " + (f"val.top1 {top1:.2f}" if top1 is not None else ""))
EOF
)
fi

cat <<EOF

==== docker/build_local.sh · $started · $(nproc) cores, load $load_start at the start, $(load) at the end ====
base image           $BASE_IMAGE, $base_size ($base_note)
build                $first_s s, $first_n built$([ "$fresh" = 1 ] && echo " (--fresh)")
image                $IMAGE, $image_size; its layers:
$layers
one-line change      $change_s s to rebuild ($PROBE), $change_n rebuilt:
$(printf '%s\n' "$change_rebuilt" | sed 's/^/                       /')
nothing changed      $cached_s s, $cached_n rebuilt
disk free            $disk_start before, $(disk) after (/var/lib)
EOF
if [ "$run" = 1 ]; then
  cat <<EOF
in the image         user $user; kdgrid check: $(echo "$check_out" | tail -1)
smoke table          fig4, 1 seed, $smoke_s s, tracked to $uri; report: $store/runs/reports
$(sed -n '/^## /,/^## /{/^- /s/^/    /p}' "$store/runs/reports/report.md")
host's store         $store/mlflow.db: $found
host's artifacts     $store/mlartifacts: $(find "$store/mlartifacts" -type f | wc -l) files, $(du -sh "$store/mlartifacts" | cut -f1) (checkpoints, specs, predictions)
EOF
fi
