"""A planted hang: one rank blocks forever inside its data loader (a FIFO posing as a JPEG, like a file on a dead
network mount). Every rank dumps its stack; rank 0 names the rank that is behind; the job ends, no hang."""
import os
import re
import subprocess
import sys
import time

from conftest import ROOT, launch_cmd, launcher_env, make_jpeg_tree


def test_hang_names_the_rank_in_its_data_loader(tmp_path):
    root = make_jpeg_tree(tmp_path / "d", classes=2, per_class={"train": 8, "val": 2})
    os.mkfifo(root / "train/c0/stuck.jpg")
    run = tmp_path / "run"
    cmd = launch_cmd("gloo", 2, [
        sys.executable, "-m", "hvdfast.cli", "train", f"data.dir={root}", "data.backend=torchvision",
        "data.workers=0", "data.batch_size=2", "data.image_size=32", "data.val_resize=32", "model.name=resnet18",
        "train.epochs=1", "train.hang_timeout_s=8", "train.progress=lines", f"train.run_dir={run}"])
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=180, cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and time.monotonic() - t0 < 120, out[-3000:]
    m = re.search(r"hvdfast: error: no training progress for \d+ s\. rank (\d) is behind: in the data loader", out)
    assert m, out[-3000:]
    stuck = int(m.group(1))
    dumps = {r: (run / "hang" / f"rank{r}.txt").read_text() for r in range(2)}
    assert "__getitem__" in dumps[stuck]                      # the stack shows where it is stuck
    assert "phase=training step" in dumps[1 - stuck]          # the other rank waits in the step's allreduce
    assert out.count("hvdfast: error: no training progress") == 1


def test_a_hang_where_no_rank_is_behind_is_said_as_such():
    """Every rank at the same step in the same phase (a link between the hosts cut mid-step: each waits in the
    gradient allreduce for the others): the diagnosis named the lowest rank "behind", which sent the user to a rank
    with nothing wrong. Ranks whose dump rank 0 cannot see (another host, no shared run folder) are named."""
    from pathlib import Path
    from hvdfast.watchdog import diagnose
    where = Path("/r/hang")
    step = "rank {} phase={} step={} idle=60s\nThread 0x1 (most recent call first):\n"
    both = {r: step.format(r, "training step", 10) for r in (0, 1)}
    assert diagnose(both, 60, where, size=2) == (
        "no training progress for 60 s. No rank is behind: all 2 are in the training step at step 10; they wait on "
        "each other in a collective that does not complete: the network between them (a link, switch or host that "
        "failed), or Horovod itself. Every rank's stacks are in /r/hang/")
    loaders = {r: step.format(r, "data loader", 3) for r in (0, 1, 2)}
    assert "all 3 are in the data loader at step 3; their data's storage does not answer" in diagnose(
        loaders, 60, where, size=3)
    assert diagnose({0: both[0], 1: step.format(1, "data loader", 10)}, 60, where, size=2).startswith(
        "no training progress for 60 s. rank 1 is behind: in the data loader at step 10")
    assert diagnose({0: both[0], 1: both[1]}, 60, where, size=1024).endswith(
        "rank 1 in the training step at step 10; no dump from rank(s) 2-1023 (dead, stuck without Python, or writing "
        "to another host's hang/). Every rank's stacks are in /r/hang/")
