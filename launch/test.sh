#!/usr/bin/env bash
# The README's test command: install what is missing (idempotent, seconds when nothing changed), then run the
# test suite. Multi-rank tests start the real launchers (horovodrun --gloo, mpirun) themselves.
# Extra arguments go to pytest (e.g. launch/test.sh -k config).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDFAST_VENV:-$ROOT/.venv}
bash "$ROOT/launch/install.sh"
cd "$ROOT"
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest tests "$@"
