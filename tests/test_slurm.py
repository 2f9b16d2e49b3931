"""A real single-node SLURM (Debian's slurm-wlm 22.05 + munge, started here as root with a private config, munge
key and ports): `hvdfast launch slurm --wait` submits what it writes, the job trains with 2 ranks through srun
--mpi=pmix, a failing job says why in one line, and a preempted job (scancel --signal=USR1 --batch) checkpoints,
requeues itself, resumes and ends bit-identical to an uninterrupted run."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hvdfast import checkpoint
from hvdfast.launch.batch import slurm_job

from conftest import (ROOT, SIGNAL_AFTER_STEP, STEPS, STEPS_PER_EPOCH, TRAIN, assert_same_parameters, hvdfast_cmd,
                      launcher_env, params, skip_unless_root_with, trained_step)

DAEMONS = ("munged", "slurmctld", "slurmd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment (SLURM_CONF) of a running one-node cluster; stopped afterwards."""
    skip_unless_root_with((*DAEMONS, "sbatch", "scontrol"), "the test SLURM runs its daemons as root",
                          "slurm-wlm and munge")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = d / "munge.sock"
    conf = d / "slurm.conf"
    conf.write_text(f"""\
ClusterName=hvdfast-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    # slurmd 22.05 reads cgroup.conf even with task/none and proctrack/linuxproc; "disabled" does not exist there
    (d / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")
    env = {**launcher_env(), "SLURM_CONF": str(conf)}
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    started = []
    try:
        subprocess.run([sbin("munged"), "--force", f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/seed"],
                       check=True, env=env)
        started.append(d / "munged.pid")
        subprocess.run([sbin("slurmctld"), "-i"], check=True, env=env)
        started.append(d / "slurmctld.pid")
        subprocess.run([sbin("slurmd")], check=True, env=env)
        started.append(d / "slurmd.pid")
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                           text=True).stdout:
            assert time.monotonic() < deadline, (d / "log/slurmd.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
        for pid_file in reversed(started):
            deadline = time.monotonic() + 30
            while pid_file.exists() and time.monotonic() < deadline:
                try:
                    pid = int(pid_file.read_text().split()[0])
                    os.kill(pid, signal.SIGTERM)
                    time.sleep(0.3)
                    os.kill(pid, 0)
                except (OSError, ValueError, IndexError):
                    break


def launch_slurm(env, cwd: Path, *args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = hvdfast_cmd("launch", "slurm", "--cpu", "--nodes", "1", "--time", "00:10:00", "--poll-s", "1",
                      *(["--wait"] if wait else []), *args)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(slurm, short_digits_dir, tmp_path_factory):
    """A 2-rank run of the preemption tests' recipe, submitted and followed by `hvdfast launch slurm --wait`."""
    cwd = tmp_path_factory.mktemp("slurm-job")
    run = cwd / "run"
    p = launch_slurm(slurm, cwd, *TRAIN, f"data.dir={short_digits_dir}", f"train.run_dir={run}")
    return p, cwd, run


def test_submitted_job_trains_with_two_ranks_through_pmix(uninterrupted):
    p, cwd, run = uninterrupted
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    job = p.stdout.split("submitted job ")[1].split(";")[0]
    assert f"job {job} COMPLETED: SUMMARY best top-1" in p.stdout
    log = (cwd / f"hvdfast-{job}.out").read_text()
    assert "srun --mpi=pmix" in (cwd / "hvdfast-slurm.sh").read_text()
    assert "2 worker(s) x 16 x 1 = global batch 32" in log and ", mpi, " in log  # PMIx ranks, MPI controller
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in rows if r["kind"] == "summary")
    assert summary["workers"] == 2 and summary["ranks_agree"]
    assert params(run)  # the final checkpoint is there, at the last step


def test_failing_job_says_why_in_one_line(slurm, tmp_path):
    p = launch_slurm(slurm, tmp_path, *TRAIN, f"data.dir={tmp_path / 'no-such-folder'}",
                     f"train.run_dir={tmp_path / 'run'}")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    said = p.stderr.strip().splitlines()
    assert len(said) == 1 and " FAILED (exit 2): hvdfast: error: " in said[0] and "no-such-folder" in said[0], said


def test_preempted_job_checkpoints_requeues_and_matches_an_uninterrupted_run(slurm, uninterrupted,
                                                                             short_digits_dir, tmp_path):
    run = tmp_path / "run"
    launcher = subprocess.Popen(
        hvdfast_cmd("launch", "slurm", "--cpu", "--nodes", "1", "--time", "00:10:00", "--warn-s", "60", "--wait",
                    "--poll-s", "1", *TRAIN, f"data.dir={short_digits_dir}", f"train.run_dir={run}"),
        env=slurm, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while trained_step(run) < SIGNAL_AFTER_STEP:  # mid-epoch 2 of 2
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    job = next(tmp_path.glob("hvdfast-*.out")).stem.split("-")[1]
    # what SLURM does --warn-s seconds before the time limit (#SBATCH --signal=B:USR1@60), now
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    while (rec := slurm_job(job, slurm)).get("JobState") != "PENDING" or int(rec.get("Restarts", 0)) < 1:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.2)
    # SLURM holds a requeued job for 2 minutes (its BeginTime); as the admin, let it start sooner, but not within
    # the second of the requeue: slurmd still refuses that job's new credential then ("Job credential revoked")
    time.sleep(5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, check=True)
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out[-3000:] + err[-3000:]
    assert f"job {job} requeued (1x)" in out and f"job {job} COMPLETED: SUMMARY" in out
    log = (tmp_path / f"hvdfast-{job}.out").read_text()
    assert "hvdfast: SIGUSR1 received: asking the training to checkpoint and stop" in log
    assert "on 2 rank(s)" in log  # srun passed the warning to both tasks
    stop_line = next(line for line in log.splitlines() if line.startswith("stopped on SIGUSR1"))
    step = int(stop_line.split(" at step ")[1].split("/")[0])
    assert SIGNAL_AFTER_STEP < step < STEPS and step % STEPS_PER_EPOCH
    assert f"requeueing job {job} to continue" in log and f"s{step:08d}.pt (step {step}" in log  # resumed there
    assert checkpoint.list_checkpoints(run / "checkpoints")
    assert_same_parameters(params(run), params(uninterrupted[2]))



def test_a_study_trains_its_cells_as_slurm_jobs(slurm, uninterrupted, short_digits_dir, tmp_path):
    """`hvdfast study --target slurm`: each cell is a job submitted and followed by `hvdfast launch slurm --wait`.
    The one cell here is the uninterrupted run's recipe, so its weights must be that run's, bit for bit."""
    spec = tmp_path / "study.yaml"
    overrides = [o for o in TRAIN[2:] if not o.startswith(("train.epochs", "train.target_top1"))]
    spec.write_text(f"recipe: {ROOT / 'launch/configs/digits-cpu.yaml'}\nepochs: 2\nbatch: 32\n"
                    f"overrides: {json.dumps(overrides + [f'data.dir={short_digits_dir}'])}\n")
    p = subprocess.run(hvdfast_cmd("study", str(spec), "--out", str(tmp_path / "out"), "--target", "slurm",
                                   "--launch", "--cpu --time 00:10:00 --poll-s 1"),
                       env=slurm, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    cell = tmp_path / "out/cells/recipe-b32-auto-w2"
    assert "COMPLETED: SUMMARY best top-1" in (cell / "launch.log").read_text()
    assert "srun --mpi=pmix" in (cell / "slurm.sh").read_text()
    from hvdfast.study.report import summary
    assert summary(cell)["params_sha256"] == summary(uninterrupted[2])["params_sha256"]
    row = f"| recipe-b32-auto-w2 | base | 32 | 16 x 1 | auto | 2 | {STEPS} |"
    assert row in (tmp_path / "out/study.md").read_text()
