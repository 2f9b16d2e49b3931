"""A worker SIGKILLed mid-epoch: the launcher exits, the same command resumes, and the result is bit-identical
to an uninterrupted run (deterministic mode, CPU, 2 ranks through the real horovodrun). A resumed run's records:
one history in metrics.jsonl's reading (hvdfast plot) and in TensorBoard."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hvdfast import checkpoint, plot

from conftest import ROOT, STEPS, STEPS_PER_EPOCH, launch_cmd, launcher_env, train_args, worker_pid

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
    out, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    assert time.monotonic() - t_kill < 60
    # rank 0's one line says what the rerun does: continue from the checkpoint it then resumes from (below)
    newest = checkpoint.list_checkpoints(run / "checkpoints")[0]
    assert (f"[0]<stderr>:hvdfast: error: a worker left the job, or the network between the workers failed, so "
            f"Horovod shut down under the others (the worker's own message, Horovod's line above or the launcher's "
            f"report says which and why). Once that is fixed, run the same command again: it continues from "
            f"{newest} (train.resume=auto).") in out.splitlines(), out[-3000:]

    again = subprocess.run(train_cmd(short_digits_dir, run), env=env, capture_output=True, text=True, timeout=600,
                           cwd=ROOT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {newest}" in again.stdout and f"s{KILL_AFTER_STEP:08d}.pt" in again.stdout
    a, b = final_params(tmp_path / "ref"), final_params(run)
    # parameters and BatchNorm buffers: a mid-epoch checkpoint holds the ranks' averaged running statistics (as
    # the uninterrupted run's checkpoints at the same steps do), not rank 0's alone
    assert any(k.endswith("running_var") for k in a) and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_resumed_run_has_one_history_in_images_seen(short_digits_dir, tmp_path):
    """A run whose newest checkpoint is older than its last records (what a crash after a checkpoint leaves: here
    the later checkpoints are removed), resumed at another global batch (as after a change of worker count): steps
    are renumbered (step 10 at batch 32 is step 20 at batch 16), so both views count images seen, and what the
    first attempt logged beyond the checkpoint is superseded: hvdfast plot drops it (plot.current) and TensorBoard
    purges it (purge_step). Before, TensorBoard kept both attempts' points at the same steps, and the plot drew
    the first attempt's steps 15-20 beside the second's 25-40."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    common = ["train.epochs=1", "train.checkpoint_every_steps=5", "train.keep_checkpoints=20"]
    first = subprocess.run(train_args(short_digits_dir, run, *common, "data.batch_size=32"), env=launcher_env(),
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for ckpt in checkpoint.list_checkpoints(run / "checkpoints"):
        if checkpoint.load(ckpt)["step"] > 10:
            ckpt.unlink()
    again = subprocess.run(train_args(short_digits_dir, run, *common, "data.batch_size=16"), env=launcher_env(),
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming from" in again.stdout and "(step 20, epoch 0)" in again.stdout, \
        again.stdout[-3000:] + again.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [(r["images_seen"], r["global_batch"]) for r in rows if r["kind"] == "start"]
    assert starts == [(0, 32), (320, 16)]
    kept = plot.current(rows)
    train = [r for r in kept if r["kind"] == "train"]
    # logged every 5 steps: 160 images at batch 32 up to the checkpoint at 320, then 80 at batch 16
    assert [r["images_seen"] for r in train] == [160, 320, 400, 480, 560, 640]
    assert [r["step"] for r in train] == [5, 10, 25, 30, 35, 40]
    assert [r["images_seen"] for r in kept if r["kind"] in ("val", "summary")] == [640, 640]
    assert sum(r["kind"] == "summary" for r in rows) == 2 and kept[-1] == rows[-1]  # the second attempt's
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag, kind, key in (("train/loss", "train", "loss"), ("train/top1", "train", "top1"),
                           ("val/top1", "val", "top1"), ("summary/best_top1", "summary", "best_top1")):
        points = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(r["images_seen"], r[key]) for r in kept if r["kind"] == kind]
        assert [s for s, _ in points] == [s for s, _ in want], tag
        assert [v for _, v in points] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-6), tag



def test_an_fp16_run_resumes_its_loss_scaler_and_ends_bit_identical(short_digits_dir, tmp_path):
    """fp16 (the GPU recipe; emulated on this CPU) trains with a loss scaler whose state is part of the run: the
    scale, halved at each step whose scaled gradients overflowed (skipped), and the good steps counted towards its
    next growth (2,000 by default). One process, 20 steps, stopped (SIGUSR1) after step 5 and run again: the
    resumed run ends with the uninterrupted run's weights and scaler, bit for bit. Resumed with a fresh scaler
    (scale 65536, count 0), it would skip other steps and round other fp16 gradients."""
    from hvdfast.run.stop import EXIT_STOPPED
    from conftest import trained_step

    def cmd(run):  # 40 steps an epoch at batch 16 on one worker
        return train_args(short_digits_dir, run, "train.precision=fp16", "train.epochs=0.5")

    def last(run):
        return checkpoint.load(checkpoint.list_checkpoints(run / "checkpoints")[0])

    ref = subprocess.run(cmd(tmp_path / "ref"), env=launcher_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    # the scaler in the records (metrics.jsonl, TensorBoard, the log line): each window's skipped steps halved the
    # scale once each (no growth in 20 steps), down to the scale the final checkpoint holds
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    scale = last(tmp_path / "ref")["scaler"]["scale"]
    assert train[-1]["loss_scale"] == scale and 2.0 ** (16 - sum(r["skipped_steps"] for r in train)) == scale, train
    assert f"loss-scale {scale:g} skipped {train[-1]['skipped_steps']}" in ref.stdout
    run = tmp_path / "run"
    job = subprocess.Popen(cmd(run), env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    deadline = time.monotonic() + 300
    while trained_step(run) < 5:
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.02)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == EXIT_STOPPED, out[-3000:]
    stopped = last(run)
    assert 5 <= stopped["step"] < 20, stopped["step"]
    assert stopped["scaler"]["scale"] < 2.0 ** 16 or stopped["scaler"]["_growth_tracker"] > 0  # not a fresh one's
    again = subprocess.run(cmd(run), env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    a, b = last(run), last(tmp_path / "ref")
    assert a["step"] == b["step"] == 20 and a["scaler"] == b["scaler"], (a["scaler"], b["scaler"])
    # one process: BatchNorm's running statistics are its own, not averaged over ranks, so every tensor is equal
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
