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
