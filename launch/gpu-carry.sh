#!/usr/bin/env bash
# Prepare what a lent GPU machine that reaches no package index needs for launch/gpu-bench.sh, in pieces a call can
# carry (the device tool carries 64 MiB a call; the GPU image has Python 3.12, torch, CUDA and MPI, not DALI):
#   .gpu/    Horovod's sdist and the wheels the image lacks (PIP_FIND_LINKS for launch/install.sh, offline)
#   .dali1/ .dali2/ .dali3/   DALI and its Python 3.12 dependencies, installed into a folder here, other Pythons'
#            extensions and headers left out, tar | xz -9e (169 MB for DALI 2.4.0), split in three
# Usage (on the machine with the index, in the repository root): bash launch/gpu-carry.sh [PYTHON_VERSION]
# Then, as run on 2026-11-27 (README, "On one H100 / H200"), calls that follow each other within the machine's
# warm time, naming in `carry` what each needs (a carried folder not named again is removed there):
#   1. carry .gpu .dali1: cp .dali1/* /tmp/dp/; start the install in a session of its own so it outlives the call:
#      HVDFAST_DALI=none PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/.gpu PARTS=install setsid bash launch/gpu-bench.sh ...
#   2. carry .gpu .dali2: cp .dali2/* /tmp/dp/
#   3. carry .gpu .dali3: cp .dali3/* /tmp/dp/; cat /tmp/dp/dalipart.* | python3 -c "import sys, tarfile;
#      tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall(sys.argv[1])" SITE_PACKAGES; wait for the
#      install; then PARTS="doctor tests fit" ... bash launch/gpu-bench.sh /tmp/gb 8192
set -euo pipefail
PYV=${1:-3.12}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PIP=${PIP:-"$ROOT/.venv/bin/pip"}
DALI_VERSION=$(sed -n 's/^DALI_VERSION=\([0-9.]*\).*/\1/p' "$ROOT/launch/install.sh")
HOROVOD_VERSION=$(sed -n 's/^HOROVOD_VERSION=\([0-9.]*\).*/\1/p' "$ROOT/launch/install.sh")
cd "$ROOT"
for d in .gpu .dali1 .dali2 .dali3; do
  git check-ignore -q "$d" || echo "/$d/" >> .git/info/exclude   # carried, never committed
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
plat=(--only-binary=:all: --python-version "$PYV" --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform any)
rm -rf .gpu .dali1 .dali2 .dali3 && mkdir -p .gpu .dali1 .dali2 .dali3
# What the image lacks of hvdfast's and Horovod's needs (setuptools and wheel: the image's own serve since the
# editable install stopped using build isolation; carried anyway, they cost 2 MB).
"$PIP" download -q --no-deps "${plat[@]}" -d .gpu mlxtend cffi pycparser setuptools wheel
"$PIP" download -q --no-deps --no-binary :all: -d .gpu "horovod==$HOROVOD_VERSION"
# DALI and what it imports that the image lacks, installed as they would be there.
"$PIP" download -q --no-deps "${plat[@]}" -d "$tmp/w" "nvidia-dali-cuda130==$DALI_VERSION" \
    nvidia-libnvcomp-cu13 nvidia-nvimgcodec-cu13 nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13 astunparse gast libcst \
    makefun nvtx optree
"$PIP" install -q --no-deps --no-compile --no-index "${plat[@]}" --target "$tmp/site" "$tmp"/w/*.whl
tag="cpython-${PYV/./}"
find "$tmp/site" -name "*.cpython-3*" ! -name "*$tag*" -delete
rm -rf "$tmp/site/nvidia/dali/include" "$tmp/site/nvidia/libnvcomp/bin" "$tmp/site"/nvidia/*/include "$tmp/site/bin"
tar -cf - -C "$tmp/site" . | xz -9e -T0 > "$tmp/dali.tar.xz"
split -n 3 -d -a 1 "$tmp/dali.tar.xz" "$tmp/dalipart."
for i in 0 1 2; do mv "$tmp/dalipart.$i" ".dali$((i + 1))/"; done
du -sh .gpu .dali1 .dali2 .dali3
