"""`hvdfast launch TARGET`: one training config + a target -> the exact launcher command (run it, or --dry-run).

Targets: local (horovodrun on this host), hosts (horovodrun over ssh with -H/--hostfile), mpirun (with the binding
and environment forwarding a cluster needs), slurm (an sbatch script, srun with PMI; submitted, and with --wait
followed to its end), pbs (a qsub script with mpirun over $PBS_NODEFILE) and ray (Horovod's RayExecutor on a Ray
cluster, or a local one on loopback). The Horovod knobs of the recipe (and of `hvdfast tune`'s file) are exported
to every rank explicitly, because remote ranks do not inherit the submitting shell's environment. hosts and mpirun
first run the ssh preflight. A scheduler's warning (SIGUSR1, SIGTERM) to this process, or to a batch script, is
passed to the workers, which stop at one step with a checkpoint and exit 75; the batch scripts requeue on 75.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import config, tuned
from ..knobs import horovod_env
from . import commands


def _train_args(args) -> list[str]:
    out = ["hvdfast", "train"]
    if args.config:
        out += ["--config", args.config]
    return out + list(args.overrides)


def _config(args) -> config.Config:
    """The resolved training config (recipe < tuned file < overrides), loaded once per command."""
    if getattr(args, "resolved", None) is None:
        args.resolved, _ = tuned.load_config(args.config, args.overrides)
    return args.resolved


def _knobs(args) -> dict:
    cfg = _config(args)
    env = horovod_env(cfg.horovod)
    prefixed = {k: v for k, v in os.environ.items() if k.startswith(("HOROVOD_", "NCCL_")) and k not in env}
    return {**prefixed, **env, **tuned.launcher_env(tuned.for_config(cfg))}


def _controller(args) -> str:
    if args.controller != "auto":
        return args.controller
    return tuned.controller(_config(args)) or "mpi"  # the file this config uses, not always the default one


def _q(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def horovodrun_cmd(args, hosts: str | None, program: list[str] | None = None, tuned_env: bool = True) -> list[str]:
    """horovodrun for args (np, hostfile, nic, controller, config, overrides) running `program` (default: hvdfast
    train with the recipe); bench runs its workers through it too."""
    # horovodrun hands its own environment to every rank (local and over ssh): start it with the tuned settings.
    env = tuned.launcher_env(tuned.for_config(_config(args))) if tuned_env else {}
    return commands.horovodrun(args.np, program or _train_args(args), hosts=hosts, hostfile=args.hostfile,
                               nic=args.nic, controller=_controller(args), env=env)


def mpirun_cmd(args, np_expr: str | None = None, hostfile: str | None = None) -> list[str]:
    return commands.mpirun(np_expr or args.np, _train_args(args), hosts=args.hosts,
                           hostfile=hostfile or args.hostfile, nic=args.nic, env=_knobs(args))


def _tasks_per_node(args) -> int:
    """GPU nodes: one task per GPU. --cpu: --tasks-per-node, else 2 (one worker per socket of a 2-socket node)."""
    if args.tasks_per_node:
        return args.tasks_per_node
    return 2 if args.cpu else args.gpus_per_node


# The batch script's preemption block, shared by slurm and pbs: the training step runs in the background so that
# the shell's trap runs at once (bash defers traps while a foreground child runs), and the trap passes the warning
# on as SIGUSR1 (the workers' stop request; srun and mpirun pass SIGUSR1 to every task).
STOP_BLOCK = """step_pid=
forward() {{
  echo "hvdfast: $1 received: asking the training to checkpoint and stop"
  [ -n "$step_pid" ] && kill -USR1 "$step_pid" 2>/dev/null
}}
trap 'forward SIGUSR1' USR1
trap 'forward SIGTERM' TERM
{step} &
step_pid=$!
rc=0
while :; do  # wait returns early (> 128) when a trap ran; wait again until the step itself ends
  wait "$step_pid" && rc=0 || rc=$?
  kill -0 "$step_pid" 2>/dev/null || break
done
if [ "$rc" -eq {code} ]; then
  echo "hvdfast: the run stopped early with a checkpoint (exit {code}); {requeue_text}"
  {requeue}
fi
exit "$rc"
"""


def slurm_script(args) -> str:
    from ..run.stop import EXIT_STOPPED
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(_knobs(args).items()))
    lines = ["#!/bin/bash", f"#SBATCH --job-name={args.job_name}", f"#SBATCH --nodes={args.nodes}",
             f"#SBATCH --ntasks-per-node={_tasks_per_node(args)}", f"#SBATCH --time={args.time}"]
    if args.gpus_per_node and not args.cpu:
        lines.append(f"#SBATCH --gpus-per-node={args.gpus_per_node}")
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    lines += [f"#SBATCH --output={args.job_name}-%j.out",
              "#SBATCH --open-mode=append  # a requeued job continues the same log",
              f"#SBATCH --signal=B:USR1@{args.warn_s}  # warn this script {args.warn_s} s before the time limit",
              "#SBATCH --requeue",
              "set -uo pipefail", f"source {shlex.quote(str(Path(sys.prefix) / 'bin/activate'))}",
              f"export {exports}" if exports else "",
              "# Horovod: one task per GPU; ranks come from PMI (SLURM_PROCID / PMIX_RANK).",
              "# Preemption and the time limit: the warning (SIGUSR1 from --signal, or a SIGTERM) goes to the job "
              "step,",
              f"# which checkpoints at a step all ranks agree on and exits {EXIT_STOPPED}; the job then requeues "
              f"itself and",
              "# resumes from that checkpoint (train.resume=auto).",
              STOP_BLOCK.format(step=f"srun --mpi={args.srun_mpi} --cpu-bind=none {_q(_train_args(args))}",
                                code=EXIT_STOPPED, requeue_text="requeueing job $SLURM_JOB_ID to continue",
                                requeue='scontrol requeue "$SLURM_JOB_ID"')]
    return "\n".join(line for line in lines if line).rstrip("\n") + "\n"


def pbs_script(args) -> str:
    from ..run.stop import EXIT_STOPPED
    total = args.nodes * _tasks_per_node(args)
    select = f"select={args.nodes}:mpiprocs={_tasks_per_node(args)}" + (
        "" if args.cpu else f":ngpus={args.gpus_per_node}")
    lines = ["#!/bin/bash", f"#PBS -N {args.job_name}", f"#PBS -l {select}", f"#PBS -l walltime={args.time}",
             "#PBS -r y  # rerunnable: a preempted job goes back to the queue"]
    if args.partition:
        lines.append(f"#PBS -q {args.partition}")
    step = _q(mpirun_cmd(args, np_expr=str(total), hostfile="$PBS_NODEFILE")).replace("'$PBS_NODEFILE'",
                                                                                     '"$PBS_NODEFILE"')
    lines += ["set -uo pipefail", 'cd "$PBS_O_WORKDIR"',
              f"source {shlex.quote(str(Path(sys.prefix) / 'bin/activate'))}",
              "# PBS sends SIGTERM (then SIGKILL after its kill_delay) at preemption or the wall time; the trap "
              "passes",
              f"# it on as SIGUSR1 (mpirun forwards that to every rank), the ranks checkpoint and exit {EXIT_STOPPED}, "
              f"and the",
              "# job submits itself again to resume (train.resume=auto). With a short kill_delay, set "
              "train.max_time below",
              "# the wall time instead: the run then stops on its own, with time to spare.",
              STOP_BLOCK.format(step=step, code=EXIT_STOPPED, requeue_text="submitting this job again to continue",
                                requeue=f'qsub {shlex.quote(str(_script_path(args).resolve()))}')]
    return "\n".join(lines).rstrip("\n") + "\n"


def _script_path(args) -> Path:
    return Path(args.script or f"hvdfast-{args.target}.sh")


def _preflight(args) -> bool:
    """ssh to every host first: a missing key, a duplicate hostname or version skew fails here in seconds, with
    the host named, instead of as a hang at hvd.init()."""
    from .. import preflight
    hosts = preflight.parse_hosts(args.hosts, args.hostfile)
    cfg = _config(args)
    data = None if cfg.data.backend == "synthetic" else os.path.abspath(cfg.data.dir)
    reports, problems = preflight.check(hosts, args.nic, data)
    if problems:
        print(preflight.render(reports, problems), file=sys.stderr, flush=True)
        print("hvdfast launch: preflight failed; fix the above (or pass --no-preflight).", file=sys.stderr)
        return False
    print(f"preflight: {len(hosts)} host(s) OK ({', '.join(r['hostname'] for r in reports.values())})",
          flush=True)
    return True


def _ray_train(cwd: str, config_path: str | None, overrides: list[str]) -> dict:
    """Runs inside each Ray worker (after RayExecutor set up Horovod's rendezvous), in the launcher's folder as
    horovodrun's ranks are, so relative data and run paths mean the same."""
    from .. import train
    from ..checkpoint import CheckpointError
    from ..data.folder import DataError
    os.chdir(cwd)
    try:
        summary = train.run(*tuned.load_config(config_path, overrides))
    except (config.ConfigError, DataError, CheckpointError, train.TrainingError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}  # every worker meets it; the driver says it once
    return {k: v for k, v in summary.items() if k != "model"}


def run_ray(args) -> int:
    """Horovod's own Ray integration: RayExecutor places the workers, Horovod's Gloo rendezvous connects them."""
    try:
        import ray
        from horovod.ray import RayExecutor
    except ImportError as exc:
        raise config.ConfigError(f"launch ray needs Ray ({exc}); pip install 'hvdfast[ray]'.") from None
    _config(args)  # a typo fails here, before any worker starts
    # horovod.ray 0.28.1 calls a Ray API that Ray deprecates: one warning per worker, nothing broken.
    quiet = {"runtime_env": {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}},
             "logging_level": logging.ERROR}
    if args.ray_address:
        ray.init(address=args.ray_address, **quiet)
    else:  # a local Ray instance on loopback, sized to the job
        ray.init(num_cpus=args.np * args.cpus_per_worker, num_gpus=args.np if args.ray_gpus else 0,
                 include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    try:
        ex = RayExecutor(RayExecutor.create_settings(timeout_s=120), num_workers=args.np,
                         cpus_per_worker=args.cpus_per_worker, use_gpu=args.ray_gpus,
                         gpus_per_worker=1 if args.ray_gpus else None)
        ex.start(extra_env_vars={k: str(v) for k, v in _knobs(args).items()})
        try:
            results = ex.run(_ray_train, args=[os.getcwd(), args.config, list(args.overrides)])
        finally:
            ex.shutdown()
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        print(f"hvdfast launch ray: a worker failed: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        print(f"hvdfast launch ray: a worker failed: {failed[0]}", file=sys.stderr)
        return 2
    agree = len({r["params_sha256"] for r in results}) == 1
    print(f"ray: {len(results)} Horovod workers finished (best top-1 {results[0]['best_top1']:.2f}%); "
          f"final parameters {'identical on every worker' if agree else 'DIFFER between workers'}", flush=True)
    return 0 if agree else 1


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
    if args.target == "ray":
        where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray instance (127.0.0.1)"
        return (f"horovod.ray.RayExecutor(num_workers={args.np}, cpus_per_worker={args.cpus_per_worker}, "
                f"use_gpu={args.ray_gpus}) on {where}: {_q(_train_args(args))}"), None
    script = slurm_script(args) if args.target == "slurm" else pbs_script(args)
    return script, None


WORKER_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


def local_workers(pid: int) -> list:
    """The training processes below launcher `pid` on this host (they hold a rank in their environment; the shells
    and the launchers between do not)."""
    import psutil  # a Horovod dependency
    out = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if any(v in proc.environ() for v in WORKER_VARS):
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


# horovodrun's own report of a worker that exited non-zero: a Python traceback of horovodrun's internals ending in
# this RuntimeError. The worker's message (rank 0's one line) is already above it.
_WORKER_EXIT = re.compile(r"RuntimeError: Horovod detected that one or more processes exited with non-zero status"
                          r".*?Process name: (?P<name>\S+)\s+Exit code: (?P<code>-?\d+)", re.S)
_PREFIXED = re.compile(r"^\[\d+(,\d+)?\]<std(out|err)>:")  # a worker's line, as horovodrun relays it


class StderrRelay:
    """Copies the launcher's stderr line by line, holding back a traceback of the launcher's own (unprefixed lines
    from "Traceback" on; workers' lines still pass): at the end, horovodrun's "one or more processes exited with
    non-zero status" becomes one line; any other traceback is shown as it was.

    The end is EOF or finish(), whichever comes first: horovodrun's helpers (its per-rank middlemen, multiprocessing's
    resource tracker) inherit its stderr and may hold it open for seconds after horovodrun itself exited, so the
    supervisor ends the relay itself rather than lose what is held when it gives up waiting."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.held: list[str] = []
        self.lock = threading.Lock()
        self.ended = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for line in self.src:
            with self.lock:
                if self.ended:
                    return
                if (self.held or line.startswith("Traceback (most recent call last):")) \
                        and not _PREFIXED.match(line):
                    self.held.append(line)
                else:
                    self.dst.write(line)
                    self.dst.flush()
        self.finish()

    def finish(self, wait_s: float = 0.0) -> None:
        """Wait up to `wait_s` for EOF, then show what is held (once, whoever calls first)."""
        if wait_s:  # the supervisor's call (run() ends with finish() at EOF, waiting for nothing)
            self.thread.join(timeout=wait_s)
        with self.lock:
            if self.ended:
                return
            self.ended = True
            text = "".join(self.held)
            m = _WORKER_EXIT.search(text)
            if m:
                self.dst.write(f"hvdfast launch: worker {m['name']} exited with code {m['code']}; horovodrun ended "
                               f"the job (the workers' own messages are above)\n")
            else:
                self.dst.write(text)
            self.dst.flush()


def supervise(cmd: list[str], target: str, run_dir: Path) -> int:
    """Run the launcher; a scheduler's warning (SIGUSR1, SIGTERM) reaching this process becomes a stop request to
    the workers, which agree on a step, checkpoint there and exit with stop.EXIT_STOPPED, as this process then does.

    mpirun passes SIGUSR1 on to every rank on every host (a SIGTERM would kill them), so it gets SIGUSR1.
    horovodrun has no such forwarding (SIGUSR1 would kill it; SIGTERM gives the ranks 5 s before SIGKILL), so the
    workers on this host get SIGUSR1 directly and the stop vote carries it to the others; only where none runs here
    does horovodrun get SIGTERM."""
    from ..run import stop
    t0 = time.time()
    child = subprocess.Popen(cmd, env=commands.process_env(), stderr=subprocess.PIPE, text=True, errors="replace")
    relay = StderrRelay(child.stderr, sys.stderr)
    relay.thread.start()

    def forward(signum, frame):
        name = signal.Signals(signum).name
        if target == "mpirun":
            child.send_signal(signal.SIGUSR1)
            how = "mpirun passes SIGUSR1 to every rank"
        else:
            workers = local_workers(child.pid)
            for proc in workers:
                proc.send_signal(signal.SIGUSR1)
            if not workers:
                child.send_signal(signal.SIGTERM)
            how = (f"SIGUSR1 to the {len(workers)} worker(s) on this host" if workers
                   else "no worker on this host: SIGTERM to horovodrun, which gives the ranks 5 s")
        print(f"hvdfast launch: {name}: asking the workers to checkpoint and stop ({how})", file=sys.stderr,
              flush=True)

    previous = {sig: signal.signal(sig, forward) for sig in stop.SIGNALS}
    try:
        try:
            rc = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the launcher too, which ends the job: wait for it, quietly
            rc = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    relay.finish(wait_s=10)
    if stop.read(run_dir, since=t0) is not None:
        # The run's own record says the workers stopped on purpose: the launcher's code does not. horovodrun reports
        # any worker's non-zero exit as 1, and where it ended the workers itself (Ctrl-C, SIGTERM) it can report 0:
        # Horovod 0.28.1's safe_shell_exec reaps a worker's shell from its terminate thread (psutil's wait) while
        # another thread waits for the same shell with subprocess, whose wait then finds no child and reads 0. With
        # every rank so, horovodrun prints no report and exits 0 (seen once in CI, under load).
        if rc == 0:  # then no line says how the job ended but rank 0's: say it
            print(f"hvdfast launch: the workers stopped with exit code {stop.EXIT_STOPPED}; horovodrun lost their "
                  f"exit status and reported 0", file=sys.stderr, flush=True)
        return stop.EXIT_STOPPED
    return rc


SLURM_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED")


def slurm_job(job: str, env: dict | None = None) -> dict:
    """scontrol's record of a job (works without SLURM accounting), as a dict; {} once the controller forgot it."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {}
    return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)


def _log_line(log: Path, prefix: str) -> str:
    """The last line of a job's log that starts with `prefix` (hvdfast's error line, the SUMMARY), else its last
    line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"no log at {log}"
    return ([line for line in lines if line.startswith(prefix)] or lines or ["(empty log)"])[-1]


def submit_slurm(path: Path, args) -> int:
    """sbatch the script; with --wait, follow the job (through requeues) and return its exit code."""
    out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"hvdfast launch: sbatch refused {path}: {said}", file=sys.stderr)
        return out.returncode
    job = out.stdout.strip().split(";")[0]
    log = Path(f"{args.job_name}-{job}.out")
    print(f"submitted job {job}; log {log} (squeue -j {job}; scancel {job} to stop it)", flush=True)
    if not args.wait:
        return 0
    restarts = 0
    while True:
        rec = slurm_job(job)
        state = rec.get("JobState", "")
        if int(rec.get("Restarts", 0)) > restarts:
            restarts = int(rec["Restarts"])
            print(f"job {job} requeued ({restarts}x): it resumes from its checkpoint once SLURM starts it again",
                  flush=True)
        if not rec or state in SLURM_ENDED:
            break
        time.sleep(args.poll_s)
    code, _, sig = rec.get("ExitCode", "1:0").partition(":")
    if state == "COMPLETED":
        print(f"job {job} COMPLETED: {_log_line(log, 'SUMMARY')}", flush=True)
        return 0
    killed = f", signal {sig}" if sig not in ("", "0") else ""
    print(f"hvdfast launch: job {job} {state or 'ended'} (exit {code}{killed}): {_log_line(log, 'hvdfast: error')}",
          file=sys.stderr, flush=True)
    return int(code) or 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hvdfast launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["local", "hosts", "mpirun", "slurm", "pbs", "ray"])
    p.add_argument("--config", "-c", help="training recipe (launch/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--np", type=int, default=2, help="workers (local, hosts, mpirun)")
    p.add_argument("--hosts", help="h1:slots,h2:slots")
    p.add_argument("--hostfile", help="file of 'host slots=N' lines")
    p.add_argument("--nic", help="network interface for Horovod / MPI traffic (e.g. ib0, eth0)")
    p.add_argument("--controller", choices=["auto", "mpi", "gloo"], default="auto",
                   help="auto: the one `hvdfast tune` chose, else mpi")
    p.add_argument("--nodes", type=int, default=1, help="slurm / pbs nodes")
    p.add_argument("--gpus-per-node", type=int, default=8, help="slurm / pbs: GPUs per node (one task each)")
    p.add_argument("--cpu", action="store_true", help="slurm / pbs: do not request GPUs")
    p.add_argument("--tasks-per-node", type=int, help="slurm / pbs: workers per node (default: --gpus-per-node; "
                                                      "with --cpu, 2)")
    p.add_argument("--warn-s", type=int, default=120,
                   help="slurm: seconds before the time limit at which SLURM warns the job (--signal=B:USR1@N); "
                        "the run checkpoints, stops and requeues itself (default 120)")
    p.add_argument("--time", default="24:00:00", help="slurm / pbs wall time")
    p.add_argument("--partition", help="slurm partition / pbs queue")
    p.add_argument("--job-name", default="hvdfast")
    p.add_argument("--srun-mpi", default="pmix", help="srun --mpi= plugin (pmix, pmi2)")
    p.add_argument("--script", help="slurm / pbs: where to write the batch script (default hvdfast-<target>.sh)")
    p.add_argument("--ray-address", help="ray: address of a running Ray cluster ('auto' to join the one this "
                                         "host belongs to); default: start a local Ray instance on loopback")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="ray: CPUs reserved per worker")
    p.add_argument("--ray-gpus", action="store_true", help="ray: one GPU per worker")
    p.add_argument("--wait", action="store_true", help="slurm: follow the submitted job (through requeues) to its "
                                                      "end; exit with its exit code and say why it failed")
    p.add_argument("--poll-s", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="print the command or script; run nothing")
    p.add_argument("--no-preflight", action="store_true",
                   help="hosts / mpirun: skip the ssh preflight (hvdfast doctor --hosts) before launching")
    args = p.parse_intermixed_args(argv)  # overrides may follow options
    text, cmd = build(args)
    if args.dry_run:
        print(text, end="" if text.endswith("\n") else "\n")
        return 0
    if args.target == "ray":
        return run_ray(args)
    if cmd is None:
        path = _script_path(args)
        path.write_text(text)
        print(f"wrote {path}", flush=True)
        if args.target == "slurm":
            return submit_slurm(path, args)
        return subprocess.call(["qsub", str(path)])
    if args.target in ("hosts", "mpirun") and (args.hosts or args.hostfile) and not args.no_preflight:
        if not _preflight(args):
            return 2
    print(text, flush=True)
    return supervise(cmd, args.target, Path(_config(args).train.run_dir))
