"""Horovod elastic through the real horovodrun: one of two workers is SIGKILLed mid-run and training finishes
with the survivor; with a blacklist cooldown the killed worker's host comes back and the job grows to 2 workers
again. The two "hosts" are two names of this machine (localhost, 127.0.0.1), so Horovod can blacklist the failed
one and keep the other; both run locally, without ssh."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SIGNAL_AFTER_STEP, hvdfast_cmd, launcher_env, worker_pid

from hvdfast import plot
from hvdfast.launch import commands


def elastic_run(digits_dir, tmp_path, epochs: int, extra: list[str], horovod: tuple = ("horovod.bucket_mb=0",),
                via_launch: bool = False, kill: str = "HOROVOD_HOSTNAME=127.0.0.1",
                on_shrunk=None) -> tuple[str, int, dict, list[dict]]:
    """(output, exit code, rank 0's summary record, all its records) of a 2-worker elastic run whose worker with
    `kill` in its environment (default: the 127.0.0.1 one) is killed at step SIGNAL_AFTER_STEP (mid-epoch: 20 steps
    per epoch on the short digits). The records must read as one history (plot.current). via_launch: started as a
    user would, `hvdfast launch hosts --hosts localhost:1,127.0.0.1:1` (which writes the discovery script),
    instead of horovodrun's elastic options given here. on_shrunk(run_dir): called once the survivor says it
    trains alone."""
    run = tmp_path / "run"
    config = ["--config", str(ROOT / "launch/configs/digits-cpu.yaml"), "train.elastic=true", *horovod,
              f"data.dir={digits_dir}", "data.backend=torchvision", "data.workers=0", "model.name=resnet18",
              "data.image_size=32", "data.val_resize=32", "data.batch_size=16", f"train.epochs={epochs}",
              "train.threads=1", "train.log_every=5", "train.checkpoint_every_steps=5", f"train.run_dir={run}"]
    if via_launch:
        assert not extra
        cmd = hvdfast_cmd("launch", "hosts", "--hosts", "localhost:1,127.0.0.1:1", "--no-preflight", *config)
    else:
        discover = tmp_path / "discover.sh"
        discover.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
        discover.chmod(0o755)
        cmd = commands.horovodrun(2, [sys.executable, "-m", "hvdfast.cli", "train", *config], controller="gloo",
                                  elastic=(1, 2, str(discover)), options=extra)
    job = subprocess.Popen(cmd, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=ROOT)
    lines = []
    killed = False
    deadline = time.monotonic() + 240
    for line in job.stdout:
        lines.append(line)
        if not killed and f"step {SIGNAL_AFTER_STEP}/" in line:  # both workers still in the job
            pid = worker_pid(kill, str(run))
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed = True
        if killed and on_shrunk is not None and "elastic: 1 worker(s)" in line:
            on_shrunk(run)
            on_shrunk = None
        assert time.monotonic() < deadline, "elastic run did not finish:\n" + "".join(lines)[-4000:]
    job.wait(timeout=60)
    out = "".join(lines)
    assert killed, out[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").is_file() else []
    kept = plot.current(rows)
    # one history: an elastic reset goes on from the last commit, and what was logged after it is superseded
    seen = [r["images_seen"] for r in kept if r["kind"] == "train"]
    assert seen == sorted(set(seen)), seen
    return out, job.returncode, next((r for r in rows if r["kind"] == "summary"), {}), rows


def test_elastic_run_survives_a_dead_worker(short_digits_dir, tmp_path):
    """Through `hvdfast launch hosts` with train.elastic=true, as a user starts it: horovodrun's elastic driver
    (Gloo, --min-np 1 --max-np 2, a discovery script in the run folder listing the hosts)."""
    out, rc, summary, rows = elastic_run(short_digits_dir, tmp_path, epochs=2, extra=[], via_launch=True)
    assert rc == 0, out[-4000:]
    starts = [(r["from"], r["workers"], r["images_seen"]) for r in rows if r["kind"] == "start"]
    assert [s[:2] for s in starts] == [("fresh", 2), ("elastic reset", 1)], starts
    assert starts[1][2] % (5 * 32) == 0, starts  # a commit: every 5 steps of global batch 32
    assert f"--min-np 1 --max-np 2 --host-discovery-script {tmp_path / 'run' / 'discover-hosts.sh'} --gloo" in out
    assert "not started by horovodrun's elastic driver" not in out
    assert "elastic: 1 worker(s), global batch 16" in out        # rebuilt for the smaller world
    assert "SUMMARY best top-1" in out and "over 1 worker(s)" in out
    assert summary["workers"] == 1 and summary["ranks_agree"]
    assert summary["final_top1"] > 30                              # it learned (10 classes: chance is 10%)
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "versions.json").is_file()


def test_the_worker_a_reset_makes_rank_0_holds_the_run_folder(short_digits_dir, tmp_path):
    """RUN_DIR/.lock is rank 0's (summary._hold): when rank 0 died the kernel let go of it, and the survivor, rank 0
    after the reset, trained on in a folder nothing guarded (seen before: the lock free from the reset to the end,
    so a second run started then would have trained there too). Now the new rank 0 takes it at the reset."""
    seen = {}

    def probe(run: Path) -> None:  # the survivor has said "elastic: 1 worker(s)": the reset is done
        fd = os.open(run / ".lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            seen["held"] = False
        except BlockingIOError:
            seen["held"] = True
        finally:
            os.close(fd)
        seen["pid"] = json.loads((run / ".lock").read_text())["pid"]
        seen["survivor"] = worker_pid("HOROVOD_RANK=1", str(run))  # the rank it was started as

    out, rc, summary, _ = elastic_run(short_digits_dir, tmp_path, epochs=2, extra=[], kill="HOROVOD_RANK=0",
                                      on_shrunk=probe)
    assert rc == 0, out[-4000:]
    assert seen["held"] and seen["pid"] == seen["survivor"] is not None, seen
    assert summary["workers"] == 1 and summary["ranks_agree"]
    assert "WARNING" not in out



def test_a_user_error_after_a_reset_is_said_by_the_new_rank_0(short_digits_dir, tmp_path):
    """An error every rank meets is said by rank 0 alone, and rank 0 was read from the launcher's variable
    (HOROVOD_RANK): the rank a process started as. After a reset that renumbers the ranks, the survivor of a dead
    rank 0 is rank 0 with HOROVOD_RANK=1, so a checkpoint it could not write (its folder full: a 64 KiB tmpfs
    mounted there once the survivor trains alone) ended the run with exit 2 and not a word. The rank is now
    Horovod's own wherever Horovod runs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system over the checkpoints needs root")
    mounted = []

    def fill(run: Path) -> None:
        folder = run / "checkpoints"
        folder.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]).returncode == 0:
            mounted.append(folder)

    try:
        out, rc, summary, _ = elastic_run(short_digits_dir, tmp_path, epochs=2, extra=[], kill="HOROVOD_RANK=0",
                                          on_shrunk=fill)
    finally:
        for folder in mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)
    if not mounted:
        pytest.skip("cannot mount a tmpfs here")
    errors = [line.split(">:", 1)[-1] for line in out.splitlines() if "hvdfast: error" in line]
    assert rc != 0 and len(errors) == 1, out[-4000:]  # horovodrun reports a worker's exit 2 as 1
    assert errors[0].startswith("hvdfast: error: could not write checkpoint ") and "No space left" in errors[0]
    assert "SUMMARY" not in out and not summary

@pytest.mark.parametrize("horovod", [("horovod.bucket_mb=0",), ("horovod.bucket_mb=25",),
                                     ("horovod.bucket_mb=25", "horovod.compression=powersgd")],
                         ids=["horovod-optimizer", "buckets", "powersgd"])
def test_elastic_run_takes_the_worker_back(short_digits_dir, tmp_path, horovod):
    """Scale-up: after the cooldown the host returns, a new worker joins with the survivor's weights (Horovod's
    response cache off and the optimizer state created before the sync; either trap alone broke this). With
    gradient buckets too (the recipe's 25 MiB): their plain optimizer is the elastic state, and a reset drops the
    step in flight; and with PowerSGD on them: every world starts from rank 0's Q with its errors at zero, so the
    ranks still end bit-identical. 4 epochs of 20 steps: the worker is back about 8 two-worker steps after the
    kill at step 25 (9 s here), with 55 left."""
    out, rc, summary, _ = elastic_run(short_digits_dir, tmp_path, epochs=4,
                                   extra=["--blacklist-cooldown-range", "2", "4"], horovod=horovod)
    assert rc == 0, out[-4000:]
    assert "elastic: 1 worker(s), global batch 16" in out
    assert out.count("elastic: 2 worker(s), global batch 32") >= 2, out[-4000:]    # at the start and on return
    assert "op.preamble.length" not in out
    assert summary["workers"] == 2, out[-3000:]
    assert summary["ranks_agree"], summary["ranks"]
    assert summary["final_top1"] > 30                              # not reset to a fresh model (chance: 10%)


def test_the_loss_scaler_is_synced_and_rolled_back_with_the_weights(tmp_path):
    """fp16 (train.precision=auto on a GPU) trains with a loss scaler whose scale decides each rank's gradients
    (scaled by its own scale, summed, divided by its own scale again). A worker joining an elastic job came with a
    fresh scaler beside a survivor's whose scale had halved at each overflow, so the two would apply different
    gradients and their weights drift apart. Horovod's TorchState now holds the scaler: a sync gives every rank
    rank 0's, a restore the committed one. The real Horovod elastic state under horovodrun --gloo, 2 ranks (a full
    elastic fp16 run that loses and takes back a worker takes 7 minutes on this CPU, where fp16 is emulated)."""
    from conftest import run_launcher
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/elastic_scaler.py"), str(tmp_path)],
                        timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    survivor, joiner = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert survivor["before"]["scale"] == 2.0 ** 13 and survivor["before"]["_growth_tracker"] == 5
    assert joiner["before"]["scale"] == 2.0 ** 16 and joiner["before"]["_growth_tracker"] == 0
    assert joiner["synced"] == survivor["synced"] == survivor["before"]
    for rank in (survivor, joiner):
        assert rank["moved"]["scale"] == 2.0 ** 12 and rank["restored"] == survivor["before"]


def test_horovod_initialises_again_with_the_recipes_knobs(tmp_path):
    """An elastic reset shuts Horovod down and initialises it again in the same process. With both
    HOROVOD_FUSION_THRESHOLD and HOROVOD_CYCLE_TIME set, Horovod 0.28.1's parameter manager wrote out of bounds
    in the second hvd.init() (exit 139); launch/install.sh's patch fixes it, so elastic runs keep the recipe's
    fusion threshold. Three init/allreduce/shutdown rounds under the real horovodrun --gloo, 2 ranks."""
    from conftest import run_launcher
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/reinit.py"), str(tmp_path)],
                        timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert {"HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME"} <= set(got["env"])
        assert got["sums"] == [[float(0 + 1 + 2 * k)] * 4 for k in range(3)]


def test_an_elastic_run_whose_folder_cannot_be_written_stops_every_worker(short_digits_dir, tmp_path):
    """No collective may come before Horovod's state sync in an elastic run, so every rank checks the run folder
    itself (elastic runs assume a shared file system): the job stops with one line from rank 0 and a failure,
    instead of rank 0's host being blacklisted and the other worker training on without a run folder."""
    discover = tmp_path / "discover.sh"
    discover.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    discover.chmod(0o755)
    (tmp_path / "a-file").write_text("")
    run = tmp_path / "a-file" / "run"
    cmd = commands.horovodrun(2, [
        sys.executable, "-m", "hvdfast.cli", "train", "--config", str(ROOT / "launch/configs/digits-cpu.yaml"),
        "train.elastic=true", f"data.dir={short_digits_dir}", "data.backend=torchvision", "data.workers=0",
        "model.name=resnet18", "data.image_size=32", "data.val_resize=32", "data.batch_size=16", "train.epochs=1",
        "train.threads=1", f"train.run_dir={run}"], controller="gloo", elastic=(1, 2, str(discover)), options=[])
    p = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "SUMMARY" not in out and "elastic: 1 worker(s)" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "hvdfast: error" in line]
    assert len(errors) == 1 and f"train.run_dir '{run}' cannot be written: Not a directory" in errors[0], out[-3000:]
    assert f'File "{ROOT / "hvdfast"}' not in out, out[-3000:]  # no worker's traceback


def test_an_elastic_run_in_a_folder_another_run_holds_stops_every_worker(short_digits_dir, tmp_path):
    """The lock on RUN_DIR/.lock (summary._hold) in an elastic run, where rank 0 cannot tell the others before
    Horovod's state sync: every rank looks at the holder, and one not of this job (another rendezvous server) stops
    them all, one line from rank 0. Before the others looked, rank 0's refusal got its host blacklisted and the other
    worker trained on in the held folder. The holder here is this test (an flock, as another run's rank 0 holds)."""
    import fcntl
    discover = tmp_path / "discover.sh"
    discover.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    discover.chmod(0o755)
    run = tmp_path / "run"
    run.mkdir()
    holder = {"pid": 4242, "host": "nodea", "since": "2026-12-07 09:00:00", "job": "10.0.0.9:4711"}
    cmd = commands.horovodrun(2, [
        sys.executable, "-m", "hvdfast.cli", "train", "--config", str(ROOT / "launch/configs/digits-cpu.yaml"),
        "train.elastic=true", f"data.dir={short_digits_dir}", "data.backend=torchvision", "data.workers=0",
        "model.name=resnet18", "data.image_size=32", "data.val_resize=32", "data.batch_size=16", "train.epochs=1",
        "train.threads=1", f"train.run_dir={run}"], controller="gloo", elastic=(1, 2, str(discover)), options=[])
    with open(run / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(json.dumps(holder))
        lock.flush()
        p = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "SUMMARY" not in out and "elastic: 1 worker(s)" not in out, out[-3000:]
        errors = [line.split(">:", 1)[-1] for line in out.splitlines() if "hvdfast: error" in line]
        assert errors == [f"hvdfast: error: train.run_dir '{run}' is in use by another run (pid 4242, host nodea, "
                          f"since 2026-12-07 09:00:00): two runs in one folder overwrite each other's checkpoints "
                          f"and records. Wait for it to end, or set another train.run_dir."], out[-3000:]
        assert f'File "{ROOT / "hvdfast"}' not in out, out[-3000:]  # no worker's traceback
        assert sorted(f.name for f in run.iterdir()) == [".lock"]
        assert json.loads((run / ".lock").read_text()) == holder


def test_an_elastic_recipe_without_the_elastic_driver_says_its_workers_are_fixed(short_digits_dir, tmp_path):
    """train.elastic=true started without horovodrun's elastic driver (alone here; mpirun alike) trains, and the
    log says that a lost worker would end it rather than leave the user believing the job is elastic."""
    p = subprocess.run(hvdfast_cmd("train", "--config", "launch/configs/digits-cpu.yaml", "train.elastic=true",
                                   f"data.dir={short_digits_dir}", "data.backend=torchvision", "data.workers=0",
                                   "model.name=resnet18", "data.image_size=32", "data.val_resize=32",
                                   "data.batch_size=16", "train.epochs=0.1", f"train.run_dir={tmp_path}"),
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=launcher_env())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "elastic: not started by horovodrun's elastic driver" in p.stdout and "SUMMARY best top-1" in p.stdout
