"""`hvdfast launch TARGET`: one training config + a target -> the exact launcher command (run it, or --dry-run).

Targets: local (horovodrun on this host), hosts (horovodrun over ssh with -H/--hostfile), mpirun (with the binding
and environment forwarding a cluster needs), slurm (an sbatch script, srun with PMI) and pbs (a qsub script with
mpirun over $PBS_NODEFILE). The Horovod knobs of the recipe (and of `hvdfast tune`'s file) are exported to every
rank explicitly, because remote ranks do not inherit the submitting shell's environment.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from . import config, dist, tune

FORWARD = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV")  # names mpirun exports with -x


def _train_args(args) -> list[str]:
    out = ["hvdfast", "train"]
    if args.config:
        out += ["--config", args.config]
    return out + list(args.overrides)


def _knobs(args) -> dict:
    cfg = config.load(args.config, args.overrides)
    env = dist.horovod_env(cfg.horovod)
    prefixed = {k: v for k, v in os.environ.items() if k.startswith(("HOROVOD_", "NCCL_")) and k not in env}
    return {**prefixed, **env}


def _controller(args) -> str:
    if args.controller != "auto":
        return args.controller
    doc = tune.load()
    return (doc or {}).get("launcher", {}).get("controller", "mpi")


def _q(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def horovodrun_cmd(args, hosts: str | None) -> list[str]:
    cmd = ["horovodrun", "-np", str(args.np)]
    if args.hostfile:
        cmd += ["--hostfile", args.hostfile]
    else:
        cmd += ["-H", hosts or f"localhost:{args.np}"]
    if args.nic:
        cmd += ["--network-interface", args.nic]
    cmd.append(f"--{_controller(args)}")
    return cmd + _train_args(args)


def mpirun_cmd(args, np_expr: str | None = None, hostfile: str | None = None) -> list[str]:
    cmd = ["mpirun", "-np", np_expr or str(args.np)]
    if hostfile or args.hostfile:
        cmd += ["-hostfile", hostfile or args.hostfile]
    elif args.hosts:
        cmd += ["-H", args.hosts]
    # Horovod: no core binding (workers set their own threads), ranks fill each host's slots in order.
    cmd += ["-bind-to", "none", "-map-by", "slot", "-mca", "pml", "ob1", "-mca", "btl", "^openib"]
    if args.nic:
        cmd += ["-mca", "btl_tcp_if_include", args.nic]
    for name in FORWARD:
        if name in os.environ or name == "PATH":
            cmd += ["-x", name]
    for k, v in sorted(_knobs(args).items()):
        cmd += ["-x", f"{k}={v}"]
    return cmd + _train_args(args)


def slurm_script(args) -> str:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(_knobs(args).items()))
    lines = ["#!/bin/bash", f"#SBATCH --job-name={args.job_name}", f"#SBATCH --nodes={args.nodes}",
             f"#SBATCH --ntasks-per-node={args.gpus_per_node}", f"#SBATCH --time={args.time}"]
    if args.gpus_per_node and not args.cpu:
        lines.append(f"#SBATCH --gpus-per-node={args.gpus_per_node}")
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    lines += ["set -euo pipefail", f"source {shlex.quote(str(Path(sys.prefix) / 'bin/activate'))}",
              f"export {exports}" if exports else "",
              "# Horovod: one task per GPU; ranks come from PMI (SLURM_PROCID / PMIX_RANK).",
              f"srun --mpi={args.srun_mpi} --cpu-bind=none {_q(_train_args(args))}"]
    return "\n".join(line for line in lines if line) + "\n"


def pbs_script(args) -> str:
    total = args.nodes * args.gpus_per_node
    select = f"select={args.nodes}:mpiprocs={args.gpus_per_node}" + (
        "" if args.cpu else f":ngpus={args.gpus_per_node}")
    lines = ["#!/bin/bash", f"#PBS -N {args.job_name}", f"#PBS -l {select}", f"#PBS -l walltime={args.time}"]
    if args.partition:
        lines.append(f"#PBS -q {args.partition}")
    lines += ["set -euo pipefail", 'cd "$PBS_O_WORKDIR"',
              f"source {shlex.quote(str(Path(sys.prefix) / 'bin/activate'))}",
              _q(mpirun_cmd(args, np_expr=str(total), hostfile="$PBS_NODEFILE")).replace("'$PBS_NODEFILE'",
                                                                                        '"$PBS_NODEFILE"')]
    return "\n".join(lines) + "\n"


def _preflight(args) -> bool:
    """ssh to every host first: a missing key, a duplicate hostname or version skew fails here in seconds, with
    the host named, instead of as a hang at hvd.init()."""
    from . import preflight
    hosts = preflight.parse_hosts(args.hosts, args.hostfile)
    cfg = config.load(args.config, args.overrides)
    data = None if cfg.data.backend == "synthetic" else os.path.abspath(cfg.data.dir)
    reports, problems = preflight.check(hosts, args.nic, data)
    if problems:
        print(preflight.render(reports, problems), file=sys.stderr, flush=True)
        print("hvdfast launch: preflight failed; fix the above (or pass --no-preflight).", file=sys.stderr)
        return False
    print(f"preflight: {len(hosts)} host(s) OK ({', '.join(r['hostname'] for r in reports.values())})",
          flush=True)
    return True


def build(args) -> tuple[str, list[str] | None]:
    """(text to show, command to run or None for a batch script written to disk)."""
    if args.target == "local":
        cmd = horovodrun_cmd(args, f"localhost:{args.np}")
        return _q(cmd), cmd
    if args.target == "hosts":
        if not (args.hosts or args.hostfile):
            raise config.ConfigError("launch hosts needs --hosts h1:4,h2:4 or --hostfile FILE.")
        cmd = horovodrun_cmd(args, args.hosts)
        return _q(cmd), cmd
    if args.target == "mpirun":
        cmd = mpirun_cmd(args)
        return _q(cmd), cmd
    script = slurm_script(args) if args.target == "slurm" else pbs_script(args)
    return script, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hvdfast launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["local", "hosts", "mpirun", "slurm", "pbs"])
    p.add_argument("--config", "-c", help="training recipe (launch/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--np", type=int, default=2, help="workers (local, hosts, mpirun)")
    p.add_argument("--hosts", help="h1:slots,h2:slots")
    p.add_argument("--hostfile", help="file of 'host slots=N' lines")
    p.add_argument("--nic", help="network interface for Horovod / MPI traffic (e.g. ib0, eth0)")
    p.add_argument("--controller", choices=["auto", "mpi", "gloo"], default="auto",
                   help="auto: the one `hvdfast tune` chose, else mpi")
    p.add_argument("--nodes", type=int, default=1, help="slurm / pbs nodes")
    p.add_argument("--gpus-per-node", type=int, default=8, help="slurm / pbs: tasks (GPUs) per node")
    p.add_argument("--cpu", action="store_true", help="slurm / pbs: do not request GPUs")
    p.add_argument("--time", default="24:00:00", help="slurm / pbs wall time")
    p.add_argument("--partition", help="slurm partition / pbs queue")
    p.add_argument("--job-name", default="hvdfast")
    p.add_argument("--srun-mpi", default="pmix", help="srun --mpi= plugin (pmix, pmi2)")
    p.add_argument("--script", help="slurm / pbs: where to write the batch script (default hvdfast-<target>.sh)")
    p.add_argument("--dry-run", action="store_true", help="print the command or script; run nothing")
    p.add_argument("--no-preflight", action="store_true",
                   help="hosts / mpirun: skip the ssh preflight (hvdfast doctor --hosts) before launching")
    args = p.parse_intermixed_args(argv)  # overrides may follow options
    text, cmd = build(args)
    if args.dry_run:
        print(text, end="" if text.endswith("\n") else "\n")
        return 0
    if cmd is None:
        path = Path(args.script or f"hvdfast-{args.target}.sh")
        path.write_text(text)
        submit = ["sbatch", str(path)] if args.target == "slurm" else ["qsub", str(path)]
        print(f"wrote {path}; submitting with {_q(submit)}", flush=True)
        return subprocess.call(submit)
    if args.target in ("hosts", "mpirun") and (args.hosts or args.hostfile) and not args.no_preflight:
        if not _preflight(args):
            return 2
    print(text, flush=True)
    env = dict(os.environ)
    if os.geteuid() == 0:  # Open MPI refuses root without these
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return subprocess.call(cmd, env=env)
