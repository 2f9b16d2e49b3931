"""The one builder of launcher command lines and their environment: `hvdfast launch`, the benchmarks and the
tests all start horovodrun and mpirun through these functions, so a flag learned once (root, -x forwarding,
binding) is right everywhere."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

BIN = Path(sys.executable).parent  # this environment's scripts: horovodrun, hvdfast
FORWARD = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV")  # names mpirun exports with -x


def process_env(base: Optional[Mapping[str, str]] = None, **extra: str) -> dict:
    """The launcher's environment: `base` (default os.environ) with this environment's bin first on PATH,
    unbuffered Python output, and the two Open MPI variables without which it refuses to run as root."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    if os.geteuid() == 0:  # Open MPI refuses root without these; CI containers run as root
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra)
    return env


def horovodrun(np: int, program: Sequence[str], *, hosts: Optional[str] = None, nic: Optional[str] = None,
               controller: str = "mpi", env: Optional[Mapping[str, str]] = None,
               elastic: Optional[tuple[int, int, str]] = None, options: Sequence[str] = ()) -> list[str]:
    """horovodrun -np N -H hosts [--network-interface NIC] --CONTROLLER [options] PROGRAM.
    `env`: variables every rank starts with (horovodrun hands its own environment to local and ssh ranks).
    `elastic`: (min workers, max workers, host discovery script) instead of a fixed host list."""
    cmd = (["env", *[f"{k}={v}" for k, v in sorted(env.items())]] if env else [])
    cmd += ["horovodrun", "-np", str(np)]  # found on process_env()'s PATH (this environment's bin first)
    if elastic:
        cmd += ["--min-np", str(elastic[0]), "--max-np", str(elastic[1]), "--host-discovery-script", elastic[2]]
    else:
        cmd += ["-H", hosts or f"localhost:{np}"]
    if nic:
        cmd += ["--network-interface", nic]
    return cmd + [f"--{controller}", *options, *program]


def mpirun(np: int | str, program: Sequence[str], *, hosts: Optional[str] = None, hostfile: Optional[str] = None,
           nic: Optional[str] = None, env: Optional[Mapping[str, str]] = None, forward: Sequence[str] = FORWARD,
           oversubscribe: bool = False) -> list[str]:
    """mpirun with what a Horovod job needs on a cluster: no core binding (workers set their own threads), ranks
    filling each host's slots in order, TCP (not openib), and the environment exported to remote ranks with -x
    (they do not inherit the submitting shell's)."""
    cmd = ["mpirun", "-np", str(np)]
    if hostfile:
        cmd += ["-hostfile", hostfile]
    elif hosts:
        cmd += ["-H", hosts]
    cmd += ["-bind-to", "none", "-map-by", "slot", "-mca", "pml", "ob1", "-mca", "btl", "^openib"]
    if oversubscribe:
        cmd.append("--oversubscribe")
    if nic:
        cmd += ["-mca", "btl_tcp_if_include", nic]
    for name in forward:
        if name in os.environ or name == "PATH":
            cmd += ["-x", name]
    for k, v in sorted((env or {}).items()):
        cmd += ["-x", f"{k}={v}"]
    return cmd + list(program)
