#!/usr/bin/env bash
# Build hvdfast's image with podman or docker, whichever is here (podman first).
#
#   docker/build.sh [cpu|gpu] [extra build options...]      -> image hvdfast:cpu (or hvdfast:gpu)
#
# Base image (HVDFAST_BASE): "auto" (default) uses the Dockerfile's public base when it is here or can be pulled,
# and otherwise makes a local Debian 12 base with debootstrap (root; ~1 min, once) and builds from that; "public",
# "local" or an image name force one. The image installs through launch/install.sh with this machine's pip sources
# (its find-links, index, constraint and CA, from `pip config list`, as a mounted pip.conf; local folders are mounted
# read-only into the build) and build cache mounts for pip and the Horovod wheel, so a rebuild after a source change
# takes minutes.
# podman here needs runc (crun refuses hybrid cgroups) and no default ulimits (the machine cannot raise NPROC):
# unless CONTAINERS_CONF is set, this script writes such a containers.conf and uses it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLAVOR=${1:-cpu}
[ $# -gt 0 ] && shift
case $FLAVOR in cpu|gpu) ;; *) echo "usage: docker/build.sh [cpu|gpu] [build options]" >&2; exit 2;; esac
TAG=${HVDFAST_IMAGE:-hvdfast:$FLAVOR}
CACHE=${HVDFAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdfast}  # containers.conf, the build's pip.conf
mkdir -p "$CACHE"
LOCAL_BASE=localhost/hvdfast-base:bookworm
log() { echo "[hvdfast image] $*" >&2; }

if command -v podman >/dev/null; then
  ENGINE=podman
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF=$CACHE/containers.conf
    { echo "[containers]"; echo "default_ulimits = []"
      if command -v runc >/dev/null; then echo "[engine]"; echo 'runtime = "runc"'; fi; } > "$CONTAINERS_CONF"
  fi
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  ENGINE=docker
  export DOCKER_BUILDKIT=1  # RUN --mount cache mounts
else
  log "no container engine: install podman (Debian: apt-get install podman runc) or docker"; exit 3
fi

dockerfile=$ROOT/docker/Dockerfile.$FLAVOR
default_base=$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile" | head -n1)
base=${HVDFAST_BASE:-auto}
if [ "$base" = auto ]; then
  if $ENGINE image inspect "$default_base" >/dev/null 2>&1 || $ENGINE pull -q "$default_base" >/dev/null 2>&1; then
    base=public
  elif [ "$FLAVOR" = gpu ]; then
    log "cannot pull $default_base (no registry reachable?) and the GPU image needs that CUDA base"; exit 3
  else
    base=local
  fi
fi
build_args=()
if [ "$base" = local ]; then
  if ! $ENGINE image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { log "no registry and no debootstrap (apt-get install debootstrap)"; exit 3; }
    [ "$(id -u)" = 0 ] || { log "making the local base with debootstrap needs root"; exit 3; }
    mirror=${HVDFAST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    log "no registry: making $LOCAL_BASE with debootstrap (Debian 12 minbase + python3 from $mirror)"
    tree=$(mktemp -d "${TMPDIR:-/tmp}/hvdfast-base.XXXXXX")
    trap 'rm -rf "$tree"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates bookworm \
      "$tree" "$mirror" > "$tree.log" 2>&1 || { tail -n 20 "$tree.log" >&2; exit 1; }
    tar -C "$tree" -c . | $ENGINE import - "$LOCAL_BASE" >/dev/null
    rm -rf "$tree" "$tree.log"
  fi
  build_args+=(--build-arg "BASE_IMAGE=$LOCAL_BASE")
elif [ "$base" != public ]; then
  build_args+=(--build-arg "BASE_IMAGE=$base")
fi

# This machine's pip sources, for the build (a wheel directory, a file:// index, a constraint file, a CA bundle),
# written to one pip.conf mounted at a fixed path, with the local folders they name mounted read-only. Mounts are not
# part of a step's cache key (build arguments are): the ~8 GB install layer is reused whichever sources this machine's
# pip has (root's pip.conf or an empty HOME's defaults), instead of being rebuilt each time they differ.
PY=${PYTHON:-python3}
mounts=()
declare -A seen=()
mount_for() {  # a local path pip is told about -> the folder to mount (an index's files lie beside simple/)
  local p=${1#file://}
  [ "${p:0:1}" = / ] || return 0
  local dir=$p
  [ -f "$p" ] && dir=$(dirname "$p")
  [ "$(basename "$dir")" = simple ] && dir=$(dirname "$dir")
  [ -e "$dir" ] && [ -z "${seen[$dir]:-}" ] && { seen[$dir]=1; mounts+=(--volume "$dir:$dir:ro"); }
  return 0
}
declare -A conf=()
while IFS= read -r line; do
  key=${line%%=*}; section=${key%%.*}; key=${key#*.}; value=${line#*=}; value=${value#\'}; value=${value%\'}
  case $section in global|install) ;; *) continue;; esac
  case $key in
    index-url|extra-index-url|find-links|constraint) ;;
    cert)  # the CA bundle this machine's pip trusts (a proxy's own CA, say), as one file beside the image's
      [ -f "$value" ] && [ -z "${seen[cert]:-}" ] && { seen[cert]=1
        mounts+=(--volume "$value:/run/hvdfast-pip-ca.crt:ro"); conf[cert]=/run/hvdfast-pip-ca.crt; }
      continue;;
    *) continue;;
  esac
  # pip lets [install] override [global]; the install step is `pip install`
  [ "$section" = install ] || [ -z "${conf[$key]:-}" ] && conf[$key]=$value
  for item in $value; do mount_for "$item"; done
done < <("$PY" -m pip config list 2>/dev/null | grep -v '^:env:' || true)
pip_conf=$CACHE/build-pip.conf
{ echo "[global]"; for key in "${!conf[@]}"; do echo "$key = ${conf[$key]}"; done; } > "$pip_conf"
mounts+=(--volume "$pip_conf:/run/hvdfast-pip.conf:ro")

network=(--network host)  # the build's apt and pip reach their sources the way this machine does
[ $ENGINE = podman ] && network+=(--format docker)  # podman's default OCI format ignores the Dockerfiles' SHELL
if [ $ENGINE = docker ] && [ ${#mounts[@]} -gt 0 ]; then
  log "docker build cannot mount folders: building with pip's defaults, not this machine's local sources"
  mounts=()
fi
log "$ENGINE build -f docker/Dockerfile.$FLAVOR -t $TAG (base: ${base/public/$default_base})"
# The install step writes ~8 GB (torch's CUDA wheels); podman stages the layer in /var/tmp before storing it. Say so
# up front where the disk is short, instead of "no space left on device" after the whole install.
store=$($ENGINE info --format '{{.Store.GraphRoot}}' 2>/dev/null || $ENGINE info --format '{{.DockerRootDir}}' \
        2>/dev/null || true)
for dir in $store /var/tmp; do
  [ -d "$dir" ] || continue
  free_gb=$(( $(df -Pk "$dir" | awk 'NR == 2 {print $4}') / 1048576 ))
  [ "$free_gb" -ge 10 ] || log "only $free_gb GB free for $dir: the build needs ~10 GB there and may fail for space"
done
# A build killed mid-step (a timeout, Ctrl-C) leaves buildah's working containers behind: podman lists them only
# with --external, its filters pass over them, and each holds its image against every prune (the install step's
# ~8 GB; 17 GB of them once filled this disk's free space mid-build). Remove those of this image's builds (their
# image carries the Dockerfiles' label, or is the local base) before building. (A build of this image running beside
# this one at the same moment would lose its step too: one build at a time, as CI and the tests run them.)
remove_stale_steps() {
  [ $ENGINE = podman ] || return 0
  local id image state base_id
  base_id=$($ENGINE image inspect --format '{{.Id}}' "$LOCAL_BASE" 2>/dev/null | cut -c1-12)
  while read -r id image state; do
    [ "$state" = Storage ] || continue
    if [ "$image" = "$base_id" ] \
       || [ "$($ENGINE image inspect --format '{{index .Labels "org.hvdfast.image"}}' "$image" 2>/dev/null)" = 1 ]; then
      $ENGINE rm -f "$id" >/dev/null 2>&1 && log "removed a killed build's step container ($id)"
    fi
  done < <($ENGINE ps -a --external --format '{{.ID}} {{.ImageID}} {{.State}}' 2>/dev/null || true)
  return 0
}
remove_stale_steps
t0=$(date +%s)
previous=$($ENGINE image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
$ENGINE build "${network[@]}" "${mounts[@]}" "${build_args[@]}" -f "$dockerfile" -t "$TAG" "$@" \
  "$ROOT"
log "built $TAG in $(( $(date +%s) - t0 )) s"
# The image this tag named before (~8 GB, now untagged): removed unless a container or another tag still uses it.
now=$($ENGINE image inspect --format '{{.Id}}' "$TAG")
if [ -n "$previous" ] && [ "$previous" != "$now" ]; then
  $ENGINE rmi "$previous" >/dev/null 2>&1 && log "removed the previous $TAG (${previous:0:12})" || true
fi
# Build steps no image uses any more (the previous image's cached steps, a failed build's): they hold the ~8 GB
# install layer each, so without this every rebuild after a source change keeps one more.
$ENGINE image prune -f --filter label=org.hvdfast.image=1 >/dev/null 2>&1 || true
