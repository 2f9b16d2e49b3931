"""`hvdfast launch TARGET`: one training config + a target -> the exact launcher command (run it, or --dry-run).

Targets: local (horovodrun on this host), hosts (horovodrun over ssh with -H/--hostfile), mpirun (with the binding
and environment forwarding a cluster needs), slurm (an sbatch script, srun with PMI; submitted, and with --wait
followed to its end), pbs (a qsub script with mpirun over $PBS_NODEFILE) and ray (Horovod's RayExecutor on a Ray
cluster, or a local one on loopback). The Horovod knobs of the recipe (and of `hvdfast tune`'s file) are exported
to every rank explicitly, because remote ranks do not inherit the submitting shell's environment. hosts and mpirun
first run the ssh preflight. A scheduler's warning (SIGUSR1, SIGTERM) to this process, or to a batch script, is
passed to the workers, which stop at one step with a checkpoint and exit 75; the batch scripts requeue on 75.
A recipe with train.elastic=true gets horovodrun's elastic driver (local and hosts: Gloo, --min-np/--max-np and a
host discovery script written to the run folder); the targets that start a fixed set of ranks refuse it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .. import config
from ..argtypes import amount, count, host_slots, hosts
from . import job
from .batch import pbs_script, slurm_script, submit_slurm
from .supervisor import supervise


def _preflight(args) -> bool:
    """ssh to every host first: a missing key, a duplicate hostname or version skew fails here in seconds, with
    the host named, instead of as a hang at hvd.init()."""
    from .. import preflight
    hosts = preflight.parse_hosts(args.hosts, args.hostfile)
    cfg = job.resolved(args)
    data = None if cfg.data.backend == "synthetic" else os.path.abspath(cfg.data.dir)
    reports, problems = preflight.check(hosts, args.nic, data)
    if problems:
        print(preflight.render(reports, problems), file=sys.stderr, flush=True)
        print("hvdfast launch: preflight failed; fix the above (or pass --no-preflight).", file=sys.stderr)
        return False
    print(f"preflight: {len(hosts)} host(s) OK ({', '.join(r['hostname'] for r in reports.values())})",
          flush=True)
    return True


def _listed_hosts(args, missing: int | None = None) -> list[tuple[str, int | None]]:
    """(host, slots) of --hostfile, then --hosts; `missing` where a line gives no slots (None: Open MPI decides,
    1: one worker, as horovodrun's -H and its elastic driver need a number)."""
    from ..preflight import hostfile_entries
    listed = (hostfile_entries(args.hostfile) if args.hostfile else []) + (host_slots(args.hosts) if args.hosts else [])
    return [(name, missing if n is None else n) for name, n in listed]


def _horovodrun_hosts(args) -> str:
    """horovodrun's -H for --hostfile and --hosts together, one worker on a host that names no slots (as elastic
    runs count them). horovodrun reads a hostfile only as bare 'host slots=N' lines (a comment, a blank line, a
    'host:N' line or max_slots= crashed it with a traceback after the preflight had accepted the file), takes -H
    only as host:N, and with both given dropped --hosts."""
    merged: dict[str, int] = {}
    for name, n in _listed_hosts(args, missing=1):
        merged[name] = merged.get(name, 0) + n  # a host listed twice has the slots of both lines, as in MPI
    return ",".join(f"{name}:{n}" for name, n in merged.items())


def workers(args) -> int:
    """--np, or where it is left out every slot of --hosts / --hostfile (else 2). More workers than the hosts
    have slots is refused here, in one line, rather than by horovodrun or mpirun after the preflight."""
    known = None  # the hosts' slots, where every host says how many
    if args.hosts or args.hostfile:
        try:
            slots = [n for _, n in _listed_hosts(args, missing=1 if args.target == "hosts" else None)]
        except config.ConfigError:  # a missing hostfile: the preflight names it
            slots = []
        known = sum(slots) if slots and None not in slots else None
    if args.np is None:
        return known or 2
    if known is not None and args.np > known and args.target in ("hosts", "mpirun"):
        where = " and ".join(x for x in (f"--hosts {args.hosts}" if args.hosts else "",
                                         f"--hostfile {args.hostfile}" if args.hostfile else "") if x)
        raise config.ConfigError(f"--np {args.np} is more workers than {where} has slots ({known}); give the hosts "
                                 f"more slots (host:N) or lower --np.")
    return args.np


def _elastic(args) -> tuple[int, int, str] | None:
    """horovodrun's elastic arguments where the recipe trains elastic (train.elastic=true), else None; the
    targets that start a fixed set of ranks, and the MPI controller, are refused in one line."""
    args.discovery = None  # (path, text) of the discovery script to write, where hvdfast writes one
    if not job.resolved(args).train.elastic:
        return None
    if args.target not in ("local", "hosts"):
        raise config.ConfigError(f"train.elastic=true needs horovodrun's elastic driver (--min-np, --max-np, "
                                 f"--host-discovery-script), which launch local and launch hosts write; launch "
                                 f"{args.target} starts a fixed set of workers. Use one of those, or "
                                 f"train.elastic=false.")
    if args.controller == "mpi":
        raise config.ConfigError("train.elastic=true runs on Horovod's Gloo controller (Horovod's elastic mode has "
                                 "no MPI one): leave --controller out or set it to gloo.")
    slots = _listed_hosts(args, missing=1) or [("localhost", args.np)]
    if len({name for name, _ in slots}) < 2 and not args.nic:
        if args.target != "local":
            raise config.ConfigError("an elastic job on one host needs --nic: horovodrun finds the interface the "
                                     "hosts share by testing at least two of them.")
        args.nic = "lo"  # horovodrun would otherwise wait for a second host to test interfaces against
    plan, text = job.elastic_plan(args, slots)
    if text is not None:
        args.discovery = (Path(plan[2]), text)
    return plan


# The targets each option acts on. One given to a target it does not act on is refused, not ignored: `launch local
# --hosts a:2,b:2` used to start 4 workers on this host, and `launch slurm --np 16` a job of --nodes x 8.
_BATCH = ("slurm", "pbs")
APPLIES = {
    "np": ("local", "hosts", "mpirun", "ray"), "hosts": ("hosts", "mpirun"), "hostfile": ("hosts", "mpirun"),
    "nic": ("local", "hosts", "mpirun", "pbs"), "no_preflight": ("hosts", "mpirun"),
    "nodes": _BATCH, "gpus_per_node": _BATCH, "cpu": _BATCH, "tasks_per_node": _BATCH, "time": _BATCH,
    "partition": _BATCH, "job_name": _BATCH, "script": _BATCH, "warn_s": ("slurm",), "srun_mpi": ("slurm",),
    "wait": ("slurm",), "ray_address": ("ray",), "cpus_per_worker": ("ray",), "ray_gpus": ("ray",),
    "min_np": ("local", "hosts"), "max_np": ("local", "hosts"), "host_discovery_script": ("local", "hosts"),
}


def _check_options(args, defaults: dict) -> None:
    given = [d for d in APPLIES if getattr(args, d) != defaults[d]]
    for dest in given:
        if args.target not in APPLIES[dest]:
            flag = "--" + dest.replace("_", "-")
            hosts = " (the scheduler picks the hosts)" if args.target in _BATCH else " (launch hosts runs on them)"
            hint = {"np": " (a batch job has --nodes x --tasks-per-node workers)", "hosts": hosts,
                    "hostfile": hosts}.get(dest, "")
            raise config.ConfigError(f"{flag} does not apply to launch {args.target}{hint}; it is an option of "
                                     f"launch {' / '.join(APPLIES[dest])}.")
    if not job.resolved(args).train.elastic:
        for dest in ("min_np", "max_np", "host_discovery_script"):
            if dest in given:
                raise config.ConfigError(f"--{dest.replace('_', '-')} is for elastic training: add "
                                         f"train.elastic=true, or leave it out.")


def _check_controller(args) -> None:
    """--controller where the target decides the controller itself is refused, not ignored: mpirun and the batch
    scripts start the ranks with MPI (Horovod's MPI controller), and Horovod's RayExecutor runs Gloo."""
    fixed = {"mpirun": "mpi", "slurm": "mpi", "pbs": "mpi", "ray": "gloo"}.get(args.target)
    if fixed and args.controller not in ("auto", fixed):
        raise config.ConfigError(f"launch {args.target} runs Horovod's {fixed.upper() if fixed == 'mpi' else 'Gloo'}"
                                 f" controller, not --controller {args.controller}; "
                                 + ("launch local and launch hosts start horovodrun --gloo." if fixed == "mpi" else
                                    "leave --controller out."))


def _check_resume(args) -> None:
    """A batch job continues after a stop by running its command again (requeued, or submitted again), so it must
    resume from the checkpoint it wrote: train.resume=never would start over at every requeue, and a fixed path
    go back to that checkpoint."""
    resume = job.resolved(args).train.resume
    if args.target in ("slurm", "pbs") and resume != "auto":
        raise config.ConfigError(
            f"train.resume={resume} in a {args.target} job: after a stop the job runs its command again, which "
            f"must continue from the checkpoint it wrote (train.resume=auto). To start over, use a new "
            f"train.run_dir; to start from a checkpoint, copy it into that run_dir's checkpoints/ folder.")


def _check_mpirun_hostfile(args) -> None:
    """Open MPI reads a hostfile's 'host:N' line as a host named 'host:N' (its hostfiles say 'host slots=N'; -H
    takes host:N), and failed to reach it after the preflight had passed: said before anything starts."""
    if args.target != "mpirun" or not args.hostfile or not Path(args.hostfile).is_file():
        return
    from ..preflight import hostfile_lines
    for words in hostfile_lines(args.hostfile):
        if ":" in words[0]:
            name, _, n = words[0].partition(":")
            raise config.ConfigError(f"hostfile {args.hostfile}: '{words[0]}' is the form of --hosts; an Open MPI "
                                     f"hostfile says '{name} slots={n}' (mpirun would look for a host named "
                                     f"'{words[0]}').")


def build(args) -> tuple[str, list[str] | None]:
    """(text to show, command to run or None for a batch script written to disk)."""
    _check_controller(args)
    _check_resume(args)
    _check_mpirun_hostfile(args)
    elastic = _elastic(args)
    if args.target == "local":
        cmd = job.horovodrun_cmd(args, f"localhost:{args.np}", elastic=elastic)
        return job.quote(cmd), cmd
    if args.target == "hosts":
        if not (args.hosts or args.hostfile):
            raise config.ConfigError("launch hosts needs --hosts h1:4,h2:4 or --hostfile FILE.")
        cmd = job.horovodrun_cmd(args, _horovodrun_hosts(args), elastic=elastic)
        return job.quote(cmd), cmd
    if args.target == "mpirun":
        cmd = job.mpirun_cmd(args)
        return job.quote(cmd), cmd
    if args.target == "ray":
        where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray instance (127.0.0.1)"
        return (f"horovod.ray.RayExecutor(num_workers={args.np}, cpus_per_worker={args.cpus_per_worker}, "
                f"use_gpu={args.ray_gpus}) on {where}: {job.quote(job.train_args(args))}"), None
    script = slurm_script(args) if args.target == "slurm" else pbs_script(args)
    return script, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hvdfast launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["local", "hosts", "mpirun", "slurm", "pbs", "ray"])
    p.add_argument("--config", "-c", help="training recipe (launch/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--np", type=count(1),
                   help="workers (local, hosts, mpirun, ray; default: every slot of --hosts / --hostfile, else 2)")
    p.add_argument("--hosts", type=hosts, help="hosts / mpirun: h1:slots,h2:slots")
    p.add_argument("--hostfile", help="hosts / mpirun: file of 'host slots=N' lines")
    p.add_argument("--nic", help="local / hosts / mpirun / pbs: network interface for Horovod / MPI traffic "
                                 "(e.g. ib0, eth0)")
    p.add_argument("--controller", choices=["auto", "mpi", "gloo"], default="auto",
                   help="local / hosts: Horovod's controller; auto: the one `hvdfast tune` chose, else mpi "
                        "(mpirun, slurm and pbs run MPI, ray Gloo)")
    p.add_argument("--nodes", type=count(1), default=1, help="slurm / pbs nodes")
    p.add_argument("--gpus-per-node", type=count(1), default=8, help="slurm / pbs: GPUs per node (one task each)")
    p.add_argument("--cpu", action="store_true", help="slurm / pbs: do not request GPUs")
    p.add_argument("--tasks-per-node", type=count(1),
                   help="slurm / pbs: workers per node (default: --gpus-per-node; with --cpu, 2)")
    p.add_argument("--warn-s", type=count(0), default=120,
                   help="slurm: seconds before the time limit at which SLURM warns the job (--signal=B:USR1@N); "
                        "the run checkpoints, stops and requeues itself (default 120)")
    p.add_argument("--time", default="24:00:00", help="slurm / pbs wall time")
    p.add_argument("--partition", help="slurm partition / pbs queue")
    p.add_argument("--job-name", default="hvdfast", help="slurm / pbs job name")
    p.add_argument("--srun-mpi", default="pmix", help="slurm: srun --mpi= plugin (pmix, pmi2)")
    p.add_argument("--script", help="slurm / pbs: where to write the batch script (default hvdfast-<target>.sh)")
    p.add_argument("--ray-address", help="ray: address of a running Ray cluster ('auto' to join the one this "
                                         "host belongs to); default: start a local Ray instance on loopback")
    p.add_argument("--cpus-per-worker", type=count(1), default=1, help="ray: CPUs reserved per worker")
    p.add_argument("--ray-gpus", action="store_true", help="ray: one GPU per worker")
    p.add_argument("--wait", action="store_true", help="slurm: follow the submitted job (through requeues) to its "
                                                      "end; exit with its exit code and say why it failed")
    p.add_argument("--poll-s", type=amount(0, above=True), default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--min-np", type=count(1), default=1,
                   help="local / hosts with train.elastic=true: fewest workers the job trains on (default 1)")
    p.add_argument("--max-np", type=count(1),
                   help="local / hosts with train.elastic=true: most workers the job grows to (default --np)")
    p.add_argument("--host-discovery-script", metavar="FILE",
                   help="local / hosts with train.elastic=true: Horovod's host discovery script (default: one "
                        "written to the run folder as discover-hosts.sh, listing --hosts / --hostfile, or "
                        "localhost:NP)")
    p.add_argument("--dry-run", action="store_true", help="print the command or script; run nothing")
    p.add_argument("--no-preflight", action="store_true",
                   help="hosts / mpirun: skip the ssh preflight (hvdfast doctor --hosts) before launching")
    args = p.parse_intermixed_args(argv)  # overrides may follow options
    _check_options(args, {dest: p.get_default(dest) for dest in APPLIES})
    args.np = workers(args)
    text, cmd = build(args)
    if args.dry_run:
        print(text, end="" if text.endswith("\n") else "\n")
        if args.discovery:
            print(f"# {args.discovery[0]} (written when launched):\n" + args.discovery[1], end="")
        return 0
    if args.discovery:
        script, body = args.discovery
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(body)
        script.chmod(0o755)
    elif args.host_discovery_script and job.resolved(args).train.elastic:
        job.check_discovery_output(os.path.abspath(args.host_discovery_script))
    if args.target == "ray":
        from .ray import run_ray  # imports Ray only for this target
        return run_ray(args)
    if cmd is None:
        path = job.script_path(args)
        path.write_text(text)
        print(f"wrote {path}", flush=True)
        tool = "sbatch" if args.target == "slurm" else "qsub"
        if shutil.which(tool) is None:
            print(f"hvdfast launch: {tool} is not on PATH here, so {path} was written but not submitted; submit it "
                  f"where {'SLURM' if tool == 'sbatch' else 'PBS'} runs: {tool} {path}", file=sys.stderr)
            return 127
        if args.target == "slurm":
            return submit_slurm(path, args)
        return subprocess.call(["qsub", str(path)])
    if args.target in ("hosts", "mpirun") and (args.hosts or args.hostfile) and not args.no_preflight:
        if not _preflight(args):
            return 2
    print(text, flush=True)
    return supervise(cmd, args.target, Path(job.resolved(args).train.run_dir))
