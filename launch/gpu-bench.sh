#!/usr/bin/env bash
# The GPU measurements behind the README's GPU table, on one GPU node with the stack installed
# (launch/install.sh, or an image from docker/Dockerfile.gpu):
#   1. hvdfast doctor and the GPU tests (DALI mixed decode, AMP fp16 step)
#   2. ResNet-50 AMP synthetic training throughput under horovodrun (NCCL): eager, beside plain Horovod's
#      synthetic-benchmark setup, and torch.compile; a Horovod timeline shows the collectives that ran
#   3. DALI GPU decode rate from JPEG (and torchvision's, same cores) with `hvdfast bench data`
#   4. ResNet-50 trained from those JPEGs through DALI (`hvdfast train`), the DALI-fed rate
# Usage: bash launch/gpu-bench.sh [OUT_DIR] [IMAGES]     (defaults: runs/gpu-bench, 8192 JPEGs)
#   PARTS="doctor tests eager compile data fit" selects sections (default: all);
#   FIT_COMPILE=true trains the "fit" part with model.compile=true. Measured output: README, "On one H100".
set -euo pipefail
OUT=${1:-runs/gpu-bench}
IMAGES=${2:-8192}
HVD=${HVDFAST:-hvdfast}
CONTROLLER=${HVDFAST_CONTROLLER:-gloo}   # one node: Gloo needs no MPI; NCCL moves the GPU tensors either way
CFG=launch/configs/imagenet-rn50-sgd.yaml
mkdir -p "$OUT"
nvidia-smi -L || { echo "gpu-bench: no GPU (nvidia-smi -L failed)" >&2; exit 2; }
PARTS=" ${PARTS:-doctor tests eager compile data fit} "
step() { printf '\n===== %s =====\n' "$*"; }
want() { [[ "$PARTS" == *" $1 "* ]]; }

if want doctor; then
  step "doctor"
  $HVD doctor | tee "$OUT/doctor.txt"
fi
if want tests; then
  step "GPU tests"
  python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.txt"
fi

for compile in false true; do
  if [ $compile = false ]; then want eager || continue; else want compile || continue; fi
  step "bench train: ResNet-50 synthetic, batch 256, compile=$compile"
  baseline=; [ $compile = false ] && baseline=--baseline   # plain Horovod's synthetic benchmark beside it
  HOROVOD_TIMELINE=$OUT/timeline-$compile.json $HVD bench train --config $CFG --controller "$CONTROLLER" \
      --np 1 --batch 256 $baseline --warmup 15 --steps 40 --out-dir "$OUT" model.compile=$compile \
      | tee "$OUT/bench-train-compile-$compile.txt"
  echo "collective operations in the Horovod timeline (one worker: broadcasts only, Horovod skips the allreduce):"
  grep -o '"name": *"[A-Z]*_\(ALLREDUCE\|BCAST\|ALLGATHER\)"' "$OUT/timeline-$compile.json" | sort | uniq -c || true
  gzip -f "$OUT/timeline-$compile.json"
done

if want data || want fit; then
  step "JPEGs: $IMAGES photo-like images"
  [ -d "$OUT/photos/train" ] || $HVD data photos "$OUT/photos" --images "$IMAGES"
fi

if want data; then
  step "bench data: DALI (nvJPEG) vs torchvision, batch 256"
  $HVD bench data --dir "$OUT/photos" --backend dali,torchvision --device gpu --batch 256 --warmup 5 \
      --batches 25 --out-dir "$OUT" | tee "$OUT/bench-data.txt"
fi

if want fit; then
  step "train: ResNet-50 from the JPEGs through DALI (model.compile=${FIT_COMPILE:-false})"
  run="$OUT/train-compile-${FIT_COMPILE:-false}"
  rm -rf "$run"
  horovodrun -np 1 -H localhost:1 "--$CONTROLLER" $HVD train --config $CFG data.dir="$OUT/photos" \
      train.epochs=4 optim.warmup_epochs=1 train.log_every=8 train.run_dir="$run" train.resume=never \
      train.checkpoint_every=0 model.compile="${FIT_COMPILE:-false}" | tee "$OUT/train.txt"
fi
