#!/usr/bin/env bash
# The GPU measurements behind the README's GPU tables, on one GPU node (or a lent GPU machine):
#   0. install (PARTS=install, not in the default): launch/install.sh into the Python that already has a CUDA torch
#      (HVDFAST_TORCH=keep: Horovod built there with NCCL against that torch; offline with PIP_NO_INDEX=1
#      PIP_FIND_LINKS=DIR holding Horovod's sdist and the wheels the image lacks)
#   1. hvdfast doctor, the GPU tests (DALI mixed decode, AMP fp16 step), one NCCL allreduce under horovodrun
#   2. ResNet-50 AMP synthetic training throughput under horovodrun (NCCL): eager, beside plain Horovod's
#      synthetic-benchmark setup; beside torchrun + DDP (fp16, channels_last); torch.compile; bf16 autocast.
#      A Horovod timeline shows the collectives that ran
#   3. DALI GPU decode rate from JPEG (and torchvision's, same cores) with `hvdfast bench data`
#   4. ResNet-50 trained by `hvdfast train` on synthetic data, then on those JPEGs through DALI: the DALI-fed rate
#      as a share of the synthetic one (FIT_EPOCHS, default 3;
#      FIT_ARGS: more config overrides for both runs; FIT_HWDEC="0.65 0.9 1": one DALI run per
#      data.hw_decoder_load, the share of JPEGs for the GPU's hardware decoder, each against the one synthetic run)
# Usage: bash launch/gpu-bench.sh [OUT_DIR] [IMAGES]     (defaults: runs/gpu-bench, 8192 JPEGs)
#   PARTS="install doctor tests nccl eager ddp compile bf16 data fit" selects sections (default: all but install);
#   BATCH (256), STEPS (40), WARMUP (15) size the synthetic runs; FIT_COMPILE=true trains the "fit" runs with
#   model.compile=true; data and fit are skipped with a message where DALI is not installed.
# Measured output: README, "On one H100 / H200".
set -euo pipefail
OUT=${1:-runs/gpu-bench}
IMAGES=${2:-8192}
HVD=${HVDFAST:-hvdfast}
CONTROLLER=${HVDFAST_CONTROLLER:-gloo}   # one node: Gloo needs no MPI; NCCL moves the GPU tensors either way
CFG=launch/configs/imagenet-rn50-sgd.yaml
mkdir -p "$OUT"
nvidia-smi -L || { echo "gpu-bench: no GPU (nvidia-smi -L failed)" >&2; exit 2; }
PARTS=" ${PARTS:-doctor tests nccl eager ddp compile bf16 data fit} "
BATCH=${BATCH:-256} STEPS=${STEPS:-40} WARMUP=${WARMUP:-15}
t0=$(date +%s)
step() { printf '\n===== [%s s] %s =====\n' "$(( $(date +%s) - t0 ))" "$*"; }
want() { [[ "$PARTS" == *" $1 "* ]]; }
PY=${PYTHON:-python3}

if want install; then
  export HVDFAST_VENV=${HVDFAST_VENV:-$("$PY" -c 'import sys; print(sys.prefix)')}
  step "install: launch/install.sh into $HVDFAST_VENV (keeping its torch)"
  "$PY" -c "import sys, torch, torchvision; print(sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, torch.cuda.get_device_name(0))"
  export HVDFAST_TORCH=keep HVDFAST_EXTRAS=${HVDFAST_EXTRAS-} HVDFAST_NO_APT=${HVDFAST_NO_APT:-1}
  # Horovod's CUDA kernels for this GPU only (its default is every architecture nvcc knows, twice)
  export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-$("$PY" -c \
    "import torch; print('%d%d' % torch.cuda.get_device_capability(0))")}
  bash launch/install.sh
  export PATH=$HVDFAST_VENV/bin:$PATH
fi
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
HAVE_DALI=1; "$PY" -c "import nvidia.dali" 2>/dev/null || HAVE_DALI=0

if want doctor; then
  step "doctor"
  $HVD doctor | tee "$OUT/doctor.txt" || echo "(doctor reported the problems above; going on)"
fi
if want tests; then
  step "GPU tests"
  sel=(); [ $HAVE_DALI = 1 ] || { echo "(DALI not installed: its test deselected)"; sel=(-k "not dali"); }
  "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py "${sel[@]}" 2>&1 | tee "$OUT/test_gpu.txt"
fi
if want nccl; then
  step "one NCCL allreduce under horovodrun"
  horovodrun -np 1 "--$CONTROLLER" "$PY" -c "
import torch, horovod.torch as hvd
hvd.init(); torch.cuda.set_device(hvd.local_rank())
t = hvd.allreduce(torch.arange(4., device='cuda'), op=hvd.Sum)
print('nccl_built', hvd.nccl_built(), 'allreduce on', t.device, t.tolist())"
fi

bench() { $HVD bench train --config $CFG --controller "$CONTROLLER" --np 1 --batch "$BATCH" --warmup "$WARMUP" \
            --steps "$STEPS" --out-dir "$OUT" "$@"; }
for compile in false true; do
  if [ $compile = false ]; then want eager || continue; else want compile || continue; fi
  step "bench train: ResNet-50 synthetic, batch $BATCH, compile=$compile"
  baseline=; [ $compile = false ] && baseline=--baseline   # plain Horovod's synthetic benchmark beside it
  HOROVOD_TIMELINE=$OUT/timeline-$compile.json bench $baseline model.compile=$compile \
      | tee "$OUT/bench-train-compile-$compile.txt"
  echo "collective operations in the Horovod timeline (one worker: broadcasts only, Horovod skips the allreduce):"
  grep -o '"name": *"[A-Z]*_\(ALLREDUCE\|BCAST\|ALLGATHER\)"' "$OUT/timeline-$compile.json" | sort | uniq -c || true
  gzip -f "$OUT/timeline-$compile.json"
done
if want ddp; then
  step "bench train: hvdfast beside torchrun + DDP (fp16 autocast, channels_last), batch $BATCH"
  bench --baseline ddp | tee "$OUT/bench-train-ddp.txt"
fi
if want bf16; then
  step "bench train: hvdfast with bf16 autocast, batch $BATCH"
  bench train.precision=bf16 | tee "$OUT/bench-train-bf16.txt"
fi

if [ $HAVE_DALI = 0 ] && { want data || want fit; }; then
  step "data, fit: skipped (DALI is not installed: pip package nvidia-dali-cuda130, or launch/install.sh)"
  PARTS=${PARTS// data / }; PARTS=${PARTS// fit / }
fi
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
  # The same trainer, config and batch; only the data differs: synthetic tensors already on the GPU, then the
  # JPEGs decoded by DALI (nvJPEG, device="mixed"; once per FIT_HWDEC value). DALI-fed / synthetic is what the
  # input pipeline costs.
  fc=${FIT_COMPILE:-false}
  fit_run() {  # BACKEND RUN_DIR [override...]
    local backend=$1 run=$2
    shift 2
    step "train: $backend data, batch $BATCH, model.compile=$fc $*"
    rm -rf "$run"
    horovodrun -np 1 -H localhost:1 "--$CONTROLLER" $HVD train --config $CFG data.backend="$backend" \
        data.dir="$OUT/photos" data.synthetic_images="$IMAGES" data.synthetic_classes=2 data.batch_size="$BATCH" \
        train.epochs="${FIT_EPOCHS:-3}" optim.warmup_epochs=1 train.log_every=8 train.run_dir="$run" \
        train.resume=never train.checkpoint_every=0 model.compile="$fc" ${FIT_ARGS:-} "$@" | tee "$run.txt"
  }
  runs=("$OUT/train-synthetic-compile-$fc")
  fit_run synthetic "${runs[0]}"
  for load in ${FIT_HWDEC:-default}; do
    if [ "$load" = default ]; then
      runs+=("$OUT/train-dali-compile-$fc")
      fit_run dali "${runs[-1]}"
    else
      runs+=("$OUT/train-dali-compile-$fc-hwdec-$load")
      fit_run dali "${runs[-1]}" "data.hw_decoder_load=$load"
    fi
  done
  "$PY" - "${runs[@]}" <<'PYEOF'
import json, statistics, sys
mean, median = [], []
for run in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    mean.append([r for r in rows if r["kind"] == "summary"][-1]["mean_img_s"])
    # the median of the same windows: one slow window (an epoch's start, a stall of the machine) does not move it
    median.append(statistics.median([r["img_s"] for r in rows if r["kind"] == "train"][1:]))
for i, run in enumerate(sys.argv[2:], 1):
    print(f"DALI-fed / synthetic: mean {mean[i]:.1f} / {mean[0]:.1f} img/s = {mean[i] / mean[0]:.3f}, median "
          f"{median[i]:.1f} / {median[0]:.1f} = {median[i] / median[0]:.3f} ({run.rsplit('/', 1)[-1]}; the same "
          f"trainer; the log windows after the first)")
PYEOF
fi
