#!/usr/bin/env bash
# The GPU path, checked in one run on a machine with an NVIDIA GPU whose Python already has a CUDA torch (a GPU
# node, an NGC container, a lent device). Installs hvdfast with launch/install.sh into that Python
# (HVDFAST_TORCH=keep: Horovod built there with NCCL, against that torch), then runs, in order of importance:
#   1. hvdfast doctor, the GPU tests (tests/test_gpu.py), one NCCL allreduce through horovodrun;
#   2. hvdfast bench train on one GPU, ResNet-50 224 px synthetic: hvdfast (fp16 AMP, channels_last) beside
#      Horovod's example (fp32) and beside torchrun + DDP; then hvdfast with torch.compile, and with bf16.
# Offline: put Horovod's sdist and the wheels the image lacks in a folder and set PIP_NO_INDEX=1
# PIP_FIND_LINKS=that-folder (see the README's "GPU check"). Everything is logged to $OUT/gpu-check.log and the
# bench reports go to $OUT (default runs/gpu-check). Each stage runs even if an earlier optional one failed.
#   usage: [BENCHES='horovod ddp compile bf16'] bash launch/gpu-check.sh [BATCH]   (BATCH: images per GPU per step, default 256)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/runs/gpu-check}
BATCH=${1:-256}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
t0=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - t0 )) s] $*"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || exit 1
PY=${PYTHON:-python3}
"$PY" -c "import sys, torch, torchvision; print(sys.version.split()[0], sys.prefix, 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0))" || exit 1
(nvcc --version | tail -n 2; cmake --version | head -n 1; g++ --version | head -n 1; command -v mpicc) 2>&1

stage "install (launch/install.sh into $("$PY" -c 'import sys; print(sys.prefix)'), Horovod with NCCL)"
export HVDFAST_VENV=${HVDFAST_VENV:-$("$PY" -c 'import sys; print(sys.prefix)')}
export HVDFAST_TORCH=keep HVDFAST_EXTRAS=${HVDFAST_EXTRAS-} HVDFAST_DALI=${HVDFAST_DALI:-none} HVDFAST_NO_APT=1
export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-$("$PY" -c \
  "import torch; print('%d%d' % torch.cuda.get_device_capability(0))")}
ti=$(date +%s)
bash launch/install.sh || { echo "gpu-check: install failed (above)"; exit 1; }
echo "install took $(( $(date +%s) - ti )) s"
export PATH=$HVDFAST_VENV/bin:$PATH OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1

stage "hvdfast doctor"
hvdfast doctor

stage "GPU tests (tests/test_gpu.py$([ "$HVDFAST_DALI" = none ] && echo ', DALI not installed: its test deselected'))"
sel=()
[ "$HVDFAST_DALI" = none ] && sel=(-k "not dali")
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py "${sel[@]}"

stage "one NCCL allreduce through horovodrun (Gloo controller)"
horovodrun -np 1 --gloo "$PY" -c "
import torch, horovod.torch as hvd
hvd.init(); torch.cuda.set_device(hvd.local_rank())
t = hvd.allreduce(torch.arange(4., device='cuda'), op=hvd.Sum)
print('nccl_built', hvd.nccl_built(), 'allreduce on', t.device, t.tolist())"

bench() { hvdfast bench train --np 1 --controller gloo --config launch/configs/imagenet-rn50-lars-3200.yaml \
            --batch "$BATCH" --steps 20 --warmup "${WARMUP:-8}" --out-dir "$OUT" "$@"; }
BENCHES=${BENCHES:-horovod ddp compile bf16}   # which of the four to run, in this order
for b in $BENCHES; do
  case $b in
    horovod) stage "bench: hvdfast vs Horovod's example (fp32), one GPU"; bench --baseline horovod ;;
    ddp) stage "bench: hvdfast vs torchrun + DDP (fp16 autocast, channels_last), one GPU"; bench --baseline ddp ;;
    compile) stage "bench: hvdfast with torch.compile"; WARMUP=12 bench model.compile=true ;;
    bf16) stage "bench: hvdfast with bf16 autocast"; bench train.precision=bf16 ;;
    *) echo "gpu-check: unknown bench '$b' (horovod, ddp, compile, bf16)" ;;
  esac
done
stage "done"
