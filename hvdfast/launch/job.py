"""One `hvdfast launch` request (its parsed arguments) -> the resolved training config, the Horovod environment
every rank must get, and the launcher's command line (through commands.py, the one builder). `hvdfast launch`'s
targets and the benchmarks' workers start from here."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from .. import config, tuned
from ..knobs import horovod_env
from . import commands


def train_args(args) -> list[str]:
    out = ["hvdfast", "train"]
    if args.config:
        out += ["--config", args.config]
    return out + list(args.overrides)


def resolved(args) -> config.Config:
    """The resolved training config (recipe < tuned file < environment < overrides), loaded once per command."""
    if getattr(args, "resolved", None) is None:
        args.resolved, _ = tuned.load_config(args.config, args.overrides)
    return args.resolved


def knobs(args) -> dict:
    """The environment every rank gets: HOROVOD_*/NCCL_* from this shell, the recipe's Horovod knobs over them, the
    tuned file's launcher environment over both."""
    cfg = resolved(args)
    env = horovod_env(cfg.horovod)
    prefixed = {k: v for k, v in os.environ.items() if k.startswith(("HOROVOD_", "NCCL_")) and k not in env}
    return {**prefixed, **env, **tuned.launcher_env(tuned.for_config(cfg))}


def controller(args) -> str:
    """horovodrun's controller: --controller, or with auto the one the config's tuned file chose, else mpi."""
    if args.controller != "auto":
        return args.controller
    return tuned.controller(resolved(args)) or "mpi"  # the file this config uses, not always the default one


def quote(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def horovodrun_cmd(args, hosts: str | None, program: list[str] | None = None, tuned_env: bool = True,
                   elastic: tuple[int, int, str] | None = None) -> list[str]:
    """horovodrun for args (np, nic, controller, config, overrides) on `hosts` (-H) running `program` (default: hvdfast
    train with the recipe); bench runs its workers through it too. `elastic`: see commands.horovodrun."""
    # horovodrun hands its own environment to every rank (local and over ssh): start it with the tuned settings.
    env = tuned.launcher_env(tuned.for_config(resolved(args))) if tuned_env else {}
    return commands.horovodrun(args.np, program or train_args(args), hosts=hosts,
                               nic=args.nic, controller="gloo" if elastic else controller(args), env=env,
                               elastic=elastic)


def discovery_script(slots: list[tuple[str, int]]) -> str:
    """Horovod's host discovery script for a fixed list of hosts: one 'host:slots' line each (horovodrun runs it
    every few seconds; a host it stops listing, or one blacklisted after a failure, is left out)."""
    return "#!/bin/sh\n# written by hvdfast launch: the hosts an elastic job may use\n" + \
        "".join(f"echo {shlex.quote(f'{name}:{n}')}\n" for name, n in slots)


def elastic_plan(args, slots: list[tuple[str, int]]) -> tuple[tuple[int, int, str], str | None]:
    """((min workers, max workers, discovery script), text of the script to write there, or None for the user's
    own --host-discovery-script) of an elastic launch on `slots`."""
    most = args.max_np or args.np
    if not 1 <= args.min_np <= args.np <= most:
        raise config.ConfigError(f"elastic launch needs --min-np <= --np <= --max-np; got {args.min_np}, {args.np}, "
                                 f"{most}.")
    if args.host_discovery_script:
        script = os.path.abspath(args.host_discovery_script)
        if not os.path.isfile(script) or not os.access(script, os.X_OK):
            why = "is not executable (chmod +x it)" if os.path.isfile(script) else "does not exist"
            raise config.ConfigError(f"--host-discovery-script {args.host_discovery_script} {why}; horovodrun runs "
                                     f"it to learn the hosts.")
        return (args.min_np, most, script), None
    path = Path(resolved(args).train.run_dir).absolute() / "discover-hosts.sh"
    return (args.min_np, most, str(path)), discovery_script(slots)


def check_discovery_output(script: str) -> None:
    """Run the user's host discovery script once, as horovodrun's elastic driver will: it reads one 'host:slots'
    line per host, and a line in any other form ('host slots=2', a hostfile's) crashed the driver with a traceback
    in its discovery thread."""
    try:
        p = subprocess.run([script], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise config.ConfigError(f"--host-discovery-script {script} could not be run ({exc}).") from None
    if p.returncode != 0:
        said = (p.stderr.strip().splitlines() or ["no message"])[-1]
        raise config.ConfigError(f"--host-discovery-script {script} exited with code {p.returncode} ({said}); "
                                 f"horovodrun runs it to learn the hosts.")
    lines = [line.strip() for line in p.stdout.splitlines() if line.strip()]
    bad = [line for line in lines if not re.fullmatch(r"[\w.-]+:\d+", line)]
    if bad or not lines:
        raise config.ConfigError(f"--host-discovery-script {script} printed "
                                 f"{repr(bad[0]) if bad else 'no hosts'}; horovodrun's elastic driver reads one "
                                 f"'host:slots' line per available host (e.g. node1:4).")


def mpirun_cmd(args, np_expr: str | None = None, hostfile: str | None = None) -> list[str]:
    """mpirun for args running hvdfast train with the recipe, every rank given `knobs` explicitly (-x)."""
    return commands.mpirun(np_expr or args.np, train_args(args), hosts=args.hosts,
                           hostfile=hostfile or args.hostfile, nic=args.nic, env=knobs(args))


def script_path(args) -> Path:
    """Where a batch target's script is written: --script, else hvdfast-<target>.sh here."""
    return Path(args.script or f"hvdfast-{args.target}.sh")
