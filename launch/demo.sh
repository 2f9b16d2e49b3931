#!/usr/bin/env bash
# The README's main job: install what is missing, create the embedded digits data set if it is not there, and
# train ResNet-50 on it with 2 Horovod workers. Ends with a SUMMARY line (accuracy, time, throughput) and writes
# runs/digits-cpu/ (metrics.jsonl, TensorBoard events, curves.png, config.yaml, versions.json, checkpoints).
# Extra arguments are config overrides (e.g. launch/demo.sh train.epochs=3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDFAST_VENV:-$ROOT/.venv}
NP=${NP:-2}
bash "$ROOT/launch/install.sh"
cd "$ROOT"
export PATH="$VENV/bin:$PATH"
[ -d data/digits/train ] || hvdfast data digits data/digits
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# MPI controller where Horovod has it (its shared-memory allreduce is several times faster than Gloo's here).
controller=--gloo
python -c "import horovod.torch as h; raise SystemExit(0 if h.mpi_built() else 1)" 2>/dev/null && controller=--mpi
horovodrun -np "$NP" -H "localhost:$NP" $controller \
  hvdfast train --config launch/configs/digits-cpu.yaml train.resume=never "$@"
hvdfast plot runs/digits-cpu
