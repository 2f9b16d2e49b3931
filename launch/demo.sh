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
horovodrun -np "$NP" -H "localhost:$NP" --gloo \
  hvdfast train --config launch/configs/digits-cpu.yaml train.resume=never "$@"
hvdfast plot runs/digits-cpu
