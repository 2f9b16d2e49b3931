"""Preemption and wall-time limits (hvdfast/run/stop.py): a scheduler's warning signal reaching one rank, or the
launcher, stops every rank at the same step with a checkpoint and exit code 75; running the same command again
resumes and ends bit-identical to an uninterrupted run. Real horovodrun and mpirun, 2 ranks, deterministic CPU."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hvdfast import checkpoint
from hvdfast.run.stop import EXIT_STOPPED

from conftest import (ROOT, SIGNAL_AFTER_STEP, STEPS, STEPS_PER_EPOCH, TRAIN, assert_same_parameters, hvdfast_cmd,
                      launch_cmd, launcher_env, params, train_args, trained_step, worker_pid)


def signal_midway(job: subprocess.Popen, run_dir: Path, send) -> None:
    deadline = time.monotonic() + 300
    while trained_step(run_dir) < SIGNAL_AFTER_STEP:
        assert job.poll() is None, "training ended before the signal: " + job.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    send()


@pytest.fixture(scope="module")
def reference(short_digits_dir, tmp_path_factory):
    """An uninterrupted run's final parameters."""
    run = tmp_path_factory.mktemp("uninterrupted")
    p = subprocess.run(launch_cmd("gloo", 2, train_args(short_digits_dir, run)), env=launcher_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return params(run)


def check_stopped_and_resume(out: str, rc: int, run: Path, cmd: list, reference: dict, reason: str,
                             horovodrun: bool = False) -> None:
    if horovodrun:  # horovodrun itself reports any worker's non-zero exit as 1 (`hvdfast launch` gives 75)
        assert rc == 1 and f"Exit code: {EXIT_STOPPED}" in out, out[-4000:]
    else:
        assert rc == EXIT_STOPPED, out[-4000:]
    record = json.loads((run / "stopped.json").read_text())
    step = record["step"]
    assert record["rank_steps"] == [step, step]                 # both ranks stopped at the same step
    assert SIGNAL_AFTER_STEP < step < STEPS and step % STEPS_PER_EPOCH, record  # mid-epoch
    assert record["reason"].startswith(reason) and record["exit_code"] == EXIT_STOPPED
    saved = checkpoint.load(Path(record["checkpoint"]))
    assert saved["step"] == step
    stops = [line for line in out.splitlines() if "stopped on" in line]
    assert len(stops) == 1 and f"at step {step}/{STEPS}" in stops[0] and "exit code 75" in stops[0], out[-3000:]
    assert not re.search(r'File ".*hvdfast/', out) and "SUMMARY" not in out  # no traceback of ours
    again = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {record['checkpoint']}" in again.stdout
    assert not (run / "stopped.json").exists()
    assert_same_parameters(params(run), reference)


# Each launcher and each signal once (pairwise; ~32 s a case): gloo with SIGTERM is what Ctrl-C gives the ranks
# (test_ctrl_c_...), mpirun with SIGUSR1 what mpirun forwards from a batch script's trap (test_pbs_...).
@pytest.mark.parametrize("launcher,sig", [("gloo", signal.SIGUSR1), ("mpirun", signal.SIGTERM)])
def test_signal_to_one_rank_stops_all_at_one_step_and_resumes_bit_identical(short_digits_dir, tmp_path, reference,
                                                                            launcher, sig):
    run = tmp_path / "run"
    cmd = launch_cmd(launcher, 2, train_args(short_digits_dir, run))
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    rank1 = "HOROVOD_RANK=1" if launcher == "gloo" else "OMPI_COMM_WORLD_RANK=1"
    signal_midway(job, run, lambda: os.kill(worker_pid(rank1, str(run)), sig))
    out, _ = job.communicate(timeout=300)
    check_stopped_and_resume(out, job.returncode, run, cmd, reference, sig.name, horovodrun=launcher == "gloo")


# `hvdfast launch` handles both signals in one handler (launch/supervisor.py); what differs is the target: SIGUSR1 as
# SLURM's --signal sends it (horovodrun would die of it) and SIGTERM as PBS sends it (mpirun would kill the ranks).
@pytest.mark.parametrize("target,sig", [("local", signal.SIGUSR1), ("mpirun", signal.SIGTERM)])
def test_signal_to_the_launcher_has_the_same_effect(short_digits_dir, tmp_path, reference, target, sig):
    """As SLURM signals the batch step: `hvdfast launch` passes the warning on (horovodrun itself would die of
    SIGUSR1, and kill the ranks 5 s after SIGTERM), and exits 75 although horovodrun reports 1."""
    run = tmp_path / "run"
    cmd = hvdfast_cmd("launch", target, "--np", "2", *(["--controller", "gloo"] if target == "local" else []),
                      *TRAIN, f"data.dir={short_digits_dir}", f"train.run_dir={run}")
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    signal_midway(job, run, lambda: job.send_signal(sig))
    out, _ = job.communicate(timeout=300)
    assert f"hvdfast launch: {sig.name}: asking the workers to checkpoint and stop" in out
    assert "Traceback" not in out  # horovodrun's own report of the workers' exit 75 is condensed to one line
    check_stopped_and_resume(out, job.returncode, run, cmd, reference, "SIGUSR1")


def test_ctrl_c_in_a_terminal_checkpoints_and_stops(short_digits_dir, tmp_path, reference):
    """Ctrl-C reaches the terminal's whole foreground process group (hvdfast launch, horovodrun and, here, the
    workers' launcher shells): horovodrun turns it into SIGTERM for the ranks, which checkpoint at an agreed step;
    the user sees the stop line and one line of hvdfast launch's saying how the job ended, no traceback, exit 75,
    and the same command resumes bit-identical."""
    run = tmp_path / "run"
    cmd = hvdfast_cmd("launch", "local", "--np", "2", "--controller", "gloo",
                      *TRAIN, f"data.dir={short_digits_dir}", f"train.run_dir={run}")
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    signal_midway(job, run, lambda: os.killpg(job.pid, signal.SIGINT))
    out, _ = job.communicate(timeout=300)
    assert "Traceback" not in out, out[-4000:]
    # horovodrun's report condensed to one line, or, where horovodrun lost the workers' exit status and reported
    # nothing (it reaps their shells from two threads, see launch/supervisor.py), hvdfast launch's line saying so
    reported = re.search(rf"hvdfast launch: worker \S+ exited with code {EXIT_STOPPED}; horovodrun ended the job", out)
    lost = f"hvdfast launch: the workers stopped with exit code {EXIT_STOPPED}; horovodrun lost" in out
    assert bool(reported) != lost, out[-4000:]  # one of the two lines, never both
    check_stopped_and_resume(out, job.returncode, run, cmd, reference, "SIGTERM")


def test_ctrl_c_to_hvdfast_train_in_a_terminal_checkpoints_and_stops(short_digits_dir, tmp_path):
    """`hvdfast train` alone (one worker, the README's first form) gets Ctrl-C itself: it ended with exit 130 and
    nothing saved since its last checkpoint (the recipe's: only the run's end). Now the first Ctrl-C is a stop
    request like a scheduler's: a line at once, a checkpoint at the step, exit 75, and the same command resumes to
    the parameters of an uninterrupted run, bit for bit."""
    one = ["data.batch_size=32"]  # one worker at the 2-rank tests' global batch: the same 40 steps
    ref = subprocess.run(train_args(short_digits_dir, tmp_path / "ref", *one), env=launcher_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    run = tmp_path / "run"
    cmd = train_args(short_digits_dir, run, *one)
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    signal_midway(job, run, lambda: os.killpg(job.pid, signal.SIGINT))
    out, _ = job.communicate(timeout=300)
    assert job.returncode == EXIT_STOPPED, out[-3000:]
    assert "hvdfast: Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit without one)" in out
    record = json.loads((run / "stopped.json").read_text())
    assert record["reason"] == "SIGINT on 1 rank(s)" and SIGNAL_AFTER_STEP < record["step"] < STEPS, record
    assert checkpoint.load(Path(record["checkpoint"]))["step"] == record["step"]
    assert "Traceback" not in out and "SUMMARY" not in out, out[-3000:]
    again = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"resuming from {record['checkpoint']}" in again.stdout, \
        again.stdout[-3000:] + again.stderr[-3000:]
    a, b = params(tmp_path / "ref"), params(run)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_max_time_stops_before_the_budget_with_a_checkpoint(short_digits_dir, tmp_path):
    run = tmp_path / "run"
    budget = 14.0  # start-up takes ~5 s here; 50 epochs (1,000 steps) outlast it on any machine (2 epochs took 8 s)
    epochs = 50
    t0 = time.time()
    p = subprocess.run(launch_cmd("gloo", 2, train_args(short_digits_dir, run, f"train.epochs={epochs}",
                                                        f"train.max_time={budget:g}s")),
                       env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    took = time.time() - t0
    assert p.returncode == 1 and f"Exit code: {EXIT_STOPPED}" in p.stdout + p.stderr  # horovodrun's report
    record = json.loads((run / "stopped.json").read_text())
    assert record["reason"] == "train.max_time" and record["rank_steps"][0] == record["rank_steps"][1]
    assert 0 < record["step"] < epochs * STEPS_PER_EPOCH and checkpoint.load(Path(record["checkpoint"]))["step"] == record["step"]
    assert took < budget + 5, took  # the ranks started after the launcher; horovodrun then exits in ~1 s
    assert "stopped on train.max_time" in p.stdout


def test_a_stop_after_resuming_at_a_larger_global_batch_continues_from_its_own_checkpoint(short_digits_dir,
                                                                                           tmp_path):
    """One epoch at global batch 16 ends at step 40; resumed at batch 32 the same images are step 20 of 40. A stop
    there writes a checkpoint of a lower step than the one it resumed from: it is the one named and the one the
    same command resumes from (newest = last written, not highest step; by step, every stop went back to step 20)."""
    run = tmp_path / "run"
    # a target the first validation reaches: the time to it, in the first run, is the whole run's
    first = subprocess.run(train_args(short_digits_dir, run, "train.epochs=1", "train.target_top1=1"),
                           env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    cmd = train_args(short_digits_dir, run, "data.batch_size=32", "train.target_top1=1")
    logged = len((run / "metrics.jsonl").read_text().splitlines())
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    deadline = time.monotonic() + 300
    while not any('"kind": "train"' in r for r in (run / "metrics.jsonl").read_text().splitlines()[logged:]):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.02)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == EXIT_STOPPED and "resuming with global batch 32 instead of 16" in out, out[-3000:]
    record = json.loads((run / "stopped.json").read_text())
    assert STEPS // 2 < record["step"] < STEPS, record
    newest = checkpoint.list_checkpoints(run / "checkpoints")[0]
    assert str(newest) == record["checkpoint"] and checkpoint.load(newest)["step"] == record["step"]
    assert f"checkpoint {newest} written" in out
    again = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"resuming from {newest} (step {record['step']}," in again.stdout, \
        again.stdout[-3000:] + again.stderr[-3000:]
    summaries = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "summary"' in r]
    assert len(summaries) == 2 and summaries[0]["time_to_target_s"] is not None
    assert summaries[1]["time_to_target_s"] == summaries[0]["time_to_target_s"]  # carried through both resumes


def test_stop_vote_phases(tmp_path):
    """The handler in this process: during setup a warning stops at once (nothing trained, nothing to save);
    while training it is only noted, for the agreed step; after training the signal does what it does without
    hvdfast. One rank: the vote is the rank's own wish."""
    from hvdfast.run.stop import Stopped, StopVote
    vote = StopVote("", time.time()).install()
    try:
        with pytest.raises(Stopped, match="stopped on SIGTERM before training began"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode
        vote.phase = "training"
        assert vote.vote(1) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # a repeat (a launcher's forwarded copy) changes nothing
        assert vote.vote(2) == "SIGUSR1 on 1 rank(s)"
        vote.signals.clear()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while training: a stop request like the others
        time.sleep(0.1)
        assert vote.vote(3) == "SIGINT on 1 rank(s)"
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C again: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        vote.phase = "setup"
        vote.signals.clear()
        with pytest.raises(KeyboardInterrupt):  # outside training: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        vote.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    budget = StopVote("10s", time.time() - 10.5)
    budget.phase = "training"
    assert budget.vote(1) == "train.max_time"  # spent


def test_max_time_parses_scheduler_forms():
    from hvdfast.config import ConfigError, parse_duration
    assert [parse_duration(t) for t in ("23h50m", "90m", "1d12h", "3600", "1-00:00:00", "1-02:00", "00:10:00",
                                        "10:30", "")] == [85800, 5400, 129600, 3600, 86400, 93600, 600, 630, 0]
    with pytest.raises(ConfigError, match="train.max_time"):
        parse_duration("tomorrow")
    from hvdfast import config
    # an override YAML reads as a number (seconds, or sexagesimal H:MM:SS in YAML 1.1) is the same duration
    assert [parse_duration(config.load(None, [f"train.max_time={t}"]).train.max_time)
            for t in ("3600", "1:00:00", "10:30", "90.5", "00:10:00")] == [3600, 3600, 630, 90.5, 600]


@pytest.mark.parametrize("horovod", [("horovod.bucket_mb=0",),
                                     ("horovod.bucket_mb=25", "horovod.compression=powersgd")],
                         ids=["horovod-optimizer", "powersgd"])
def test_elastic_run_stops_at_one_step_and_resumes(short_digits_dir, tmp_path, horovod):
    """Horovod elastic (two host names of this machine, as in test_elastic): a warning to one worker stops both
    at one step with a checkpoint, each exiting 75 (Horovod's elastic driver ends the job when every worker has
    failed, and does not restart them); the same command then resumes and finishes. With PowerSGD the resume takes
    Q from the checkpoint without a collective (a joiner may start alone) and the ranks still end identical."""
    from hvdfast.launch import commands
    discover = tmp_path / "discover.sh"
    discover.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    discover.chmod(0o755)
    run = tmp_path / "run"
    cmd = commands.horovodrun(2, train_args(short_digits_dir, run, "train.elastic=true", *horovod, "train.threads=1"),
                              controller="gloo", elastic=(1, 2, str(discover)))
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    signal_midway(job, run, lambda: os.kill(worker_pid("HOROVOD_HOSTNAME=127.0.0.1", str(run)), signal.SIGUSR1))
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 1 and f"Exit code: {EXIT_STOPPED}" in out, out[-3000:]
    record = json.loads((run / "stopped.json").read_text())
    assert record["rank_steps"] == [record["step"]] * 2 and SIGNAL_AFTER_STEP < record["step"] < STEPS
    assert checkpoint.load(Path(record["checkpoint"]))["step"] == record["step"]
    again = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {record['checkpoint']}" in again.stdout
    assert "SUMMARY best top-1" in again.stdout and "over 2 worker(s)" in again.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if r["kind"] == "summary"][-1]["ranks_agree"]


def test_dali_run_stops_with_its_build_ahead_thread_joined(short_digits_dir, tmp_path):
    """DALI builds the next epoch's pipeline in a thread while this one trains; a stop mid-epoch exits cleanly
    (the loader joins that thread before DALI's exit hook), and the rerun resumes from the stop's checkpoint and
    ends bit-identical to an uninterrupted DALI run: the epoch's order and its random crops are replayed, the
    batches consumed before the stop dropped (data/dali.py)."""
    pytest.importorskip("nvidia.dali")
    ref = tmp_path / "uninterrupted"
    p = subprocess.run(launch_cmd("gloo", 2, train_args(short_digits_dir, ref, "data.backend=dali")),
                       env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "run"
    cmd = launch_cmd("gloo", 2, train_args(short_digits_dir, run, "data.backend=dali"))
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    signal_midway(job, run, lambda: os.kill(worker_pid("HOROVOD_RANK=0", str(run)), signal.SIGUSR1))
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 1 and out.count(f"exit with status code {EXIT_STOPPED}") == 2, out[-3000:]
    ours = [line for line in out.splitlines()
            if re.search(r'File ".*(hvdfast|dali)/', line) or "terminate called" in line]
    assert ours == [], ours
    record = json.loads((run / "stopped.json").read_text())
    assert record["rank_steps"] == [record["step"]] * 2 and SIGNAL_AFTER_STEP < record["step"] < STEPS
    again = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {record['checkpoint']}" in again.stdout and "SUMMARY best top-1" in again.stdout
    assert_same_parameters(params(run), params(ref))


def test_pbs_batch_script_passes_sigterm_on_and_exits_75(short_digits_dir, tmp_path, reference):
    """The script `hvdfast launch pbs` writes, run by bash as PBS runs it (PBS_O_WORKDIR, PBS_NODEFILE set; no
    PBS server here, so its final `qsub` of itself is not exercised): PBS's SIGTERM reaches the script, the trap
    passes it to mpirun as SIGUSR1, the ranks stop at one step with a checkpoint, and the script exits 75."""
    run = tmp_path / "run"
    script = tmp_path / "job.sh"
    args = [*TRAIN, f"data.dir={short_digits_dir}", f"train.run_dir={run}"]
    made = subprocess.run(hvdfast_cmd("launch", "pbs", "--cpu", "--nodes", "1", "--script", str(script), "--dry-run",
                                      *args), env=launcher_env(), cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    script.write_text(made.stdout)
    nodes = tmp_path / "nodefile"
    nodes.write_text("localhost\nlocalhost\n")
    env = launcher_env()
    env.update(PBS_O_WORKDIR=str(ROOT), PBS_NODEFILE=str(nodes), PBS_JOBID="1.test")
    job = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    signal_midway(job, run, lambda: job.send_signal(signal.SIGTERM))
    out, _ = job.communicate(timeout=300)
    assert "hvdfast: SIGTERM received: asking the training to checkpoint and stop" in out, out[-3000:]
    assert "stopped early with a checkpoint (exit 75); submitting this job again" in out
    cmd = launch_cmd("mpirun", 2, train_args(short_digits_dir, run))
    check_stopped_and_resume(out, job.returncode, run, cmd, reference, "SIGUSR1")


def test_powersgd_run_resumes_its_q_and_every_ranks_error_bit_identical(short_digits_dir, tmp_path):
    """PowerSGD keeps state between steps: Q (the warm start, the same on every rank) and each rank's own error
    feedback. A stop writes Q into the checkpoint and each rank's error into its own file beside it; the resumed
    run ends bit-identical to an uninterrupted one. Without rank 1's file it must not (error restarted at zero
    there), and it says so: the state is what makes the resume exact."""
    import shutil
    extra = ("horovod.compression=powersgd", "horovod.bucket_mb=25")
    ref_run = tmp_path / "uninterrupted"
    p = subprocess.run(launch_cmd("gloo", 2, train_args(short_digits_dir, ref_run, *extra)), env=launcher_env(),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "run"
    cmd = launch_cmd("gloo", 2, train_args(short_digits_dir, run, *extra))
    job = subprocess.Popen(cmd, env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    signal_midway(job, run, lambda: os.kill(worker_pid("HOROVOD_RANK=1", str(run)), signal.SIGUSR1))
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 1 and f"Exit code: {EXIT_STOPPED}" in out, out[-3000:]
    ckpt = Path(json.loads((run / "stopped.json").read_text())["checkpoint"])
    assert checkpoint.load(ckpt)["compressor_q"] is not None
    assert all(checkpoint.load_rank_state(ckpt, r)["world_size"] == 2 for r in (0, 1))

    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    checkpoint.rank_state_path(partial / "checkpoints" / ckpt.name, 1).unlink()
    for where, note in ((run, False), (partial, True)):
        again = subprocess.run(launch_cmd("gloo", 2, train_args(short_digits_dir, where, *extra)), env=launcher_env(),
                               cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert ("error feedback restored on 1 of 2 rank(s)" in again.stdout) == note, again.stdout[-3000:]
    assert_same_parameters(params(run), params(ref_run))
    with pytest.raises(AssertionError):
        assert_same_parameters(params(partial), params(ref_run))
