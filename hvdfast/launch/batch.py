"""The batch targets of `hvdfast launch`: the SLURM and PBS scripts (with the preemption block that turns a
scheduler's warning into a checkpointed stop and a requeue), and sbatch's submission, followed with --wait through
requeues to the job's end."""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from .job import knobs, mpirun_cmd, quote, script_path, train_args


def tasks_per_node(args) -> int:
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
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(knobs(args).items()))
    lines = ["#!/bin/bash", f"#SBATCH --job-name={args.job_name}", f"#SBATCH --nodes={args.nodes}",
             f"#SBATCH --ntasks-per-node={tasks_per_node(args)}", f"#SBATCH --time={args.time}"]
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
              STOP_BLOCK.format(step=f"srun --mpi={args.srun_mpi} --cpu-bind=none {quote(train_args(args))}",
                                code=EXIT_STOPPED, requeue_text="requeueing job $SLURM_JOB_ID to continue",
                                requeue='scontrol requeue "$SLURM_JOB_ID"')]
    return "\n".join(line for line in lines if line).rstrip("\n") + "\n"


def pbs_script(args) -> str:
    from ..run.stop import EXIT_STOPPED
    total = args.nodes * tasks_per_node(args)
    select = f"select={args.nodes}:mpiprocs={tasks_per_node(args)}" + (
        "" if args.cpu else f":ngpus={args.gpus_per_node}")
    lines = ["#!/bin/bash", f"#PBS -N {args.job_name}", f"#PBS -l {select}", f"#PBS -l walltime={args.time}",
             "#PBS -r y  # rerunnable: a preempted job goes back to the queue"]
    if args.partition:
        lines.append(f"#PBS -q {args.partition}")
    step = quote(mpirun_cmd(args, np_expr=str(total), hostfile="$PBS_NODEFILE")).replace("'$PBS_NODEFILE'",
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
                                requeue=f'qsub {shlex.quote(str(script_path(args).resolve()))}')]
    return "\n".join(lines).rstrip("\n") + "\n"


SLURM_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED")


def slurm_job(job: str, env: dict | None = None) -> dict:
    """scontrol's record of a job (works without SLURM accounting), as a dict; {} once the controller forgot it."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {}
    return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)


def log_line(log: Path, prefix: str) -> str:
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
        print(f"job {job} COMPLETED: {log_line(log, 'SUMMARY')}", flush=True)
        return 0
    killed = f", signal {sig}" if sig not in ("", "0") else ""
    print(f"hvdfast launch: job {job} {state or 'ended'} (exit {code}{killed}): {log_line(log, 'hvdfast: error')}",
          file=sys.stderr, flush=True)
    return int(code) or 1
