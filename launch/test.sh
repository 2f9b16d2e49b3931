#!/usr/bin/env bash
# The README's test command: install what is missing (idempotent, seconds when nothing changed), then run the
# test suite. Multi-rank tests start the real launchers (horovodrun --gloo, mpirun) themselves.
# Extra arguments go to pytest (e.g. launch/test.sh -k config).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDFAST_VENV:-$ROOT/.venv}
bash "$ROOT/launch/install.sh"
# Test-only system packages: the multi-host tests run an sshd per simulated host (network namespaces, iproute2);
# the SLURM tests start a private one-node SLURM (slurm-wlm, munge); the container tests build and run the image
# with podman and runc from a debootstrap base (no registry is needed). Installed when missing and root;
# otherwise those tests skip and say why.
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null || need+=(iproute2)
{ [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ]; } || need+=(slurm-wlm)
[ -x /usr/sbin/munged ] || need+=(munge)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && [ "${HVDFAST_NO_APT:-0}" != 1 ]; then
  echo "[hvdfast test] apt-get install ${need[*]} (for the multi-host, SLURM and container tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cd "$ROOT"
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest tests "$@"
