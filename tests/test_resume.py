"""A worker SIGKILLed mid-epoch: the launcher exits, the same command resumes, and the result is bit-identical
to an uninterrupted run (deterministic mode, CPU, 2 ranks through the real horovodrun)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from hvdfast import checkpoint

from conftest import ROOT, STEPS, STEPS_PER_EPOCH, launch_cmd, launcher_env, worker_pid

KILL_AFTER_STEP = 30    # epoch 2 of 2 starts at step STEPS_PER_EPOCH (20): the kill lands mid-epoch
assert STEPS_PER_EPOCH < KILL_AFTER_STEP < STEPS and KILL_AFTER_STEP % 10 == 0  # right after a checkpoint


def train_cmd(data_dir, run_dir):
    return launch_cmd("gloo", 2, [
        sys.executable, "-m", "hvdfast.cli", "train", "--config", str(ROOT / "launch/configs/digits-cpu.yaml"),
        f"data.dir={data_dir}", "data.backend=torchvision", "data.workers=0", "model.name=resnet18",
        "data.image_size=32", "data.val_resize=32", "data.batch_size=16", "train.epochs=2",
        "train.deterministic=true", "train.checkpoint_every_steps=10", "train.keep_checkpoints=20",
        "train.log_every=10", "train.progress=lines", "train.target_top1=0", f"train.run_dir={run_dir}"])


def final_params(run_dir: Path) -> dict:
    last = checkpoint.list_checkpoints(run_dir / "checkpoints")[0]
    state = checkpoint.load(last)
    assert state["step"] == STEPS
    return state["model"]


def test_killed_worker_ends_the_job_and_the_rerun_matches_an_uninterrupted_run(short_digits_dir, tmp_path):
    env = launcher_env()
    ref = subprocess.run(train_cmd(short_digits_dir, tmp_path / "ref"), env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    run = tmp_path / "killed"
    job = subprocess.Popen(train_cmd(short_digits_dir, run), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = [c for c in checkpoint.list_checkpoints(run / "checkpoints")
                if int(c.name.split("-s")[1][:8]) >= KILL_AFTER_STEP]
        if done or job.poll() is not None:
            break
        time.sleep(0.05)
    assert job.poll() is None, "training finished before the kill: " + job.stdout.read()[-2000:]
    pid = worker_pid("HOROVOD_RANK=1", str(run))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    job.wait(timeout=120)
    assert job.returncode != 0
    assert time.monotonic() - t_kill < 60

    again = subprocess.run(train_cmd(short_digits_dir, run), env=env, capture_output=True, text=True, timeout=600,
                           cwd=ROOT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from" in again.stdout and f"s{KILL_AFTER_STEP:08d}.pt" in again.stdout
    a, b = final_params(tmp_path / "ref"), final_params(run)
    # parameters and BatchNorm buffers: a mid-epoch checkpoint holds the ranks' averaged running statistics (as
    # the uninterrupted run's checkpoints at the same steps do), not rank 0's alone
    assert any(k.endswith("running_var") for k in a) and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
