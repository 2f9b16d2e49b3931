"""hvdfast study: the grid a spec makes (pure), the embedded MNIST set, and a real 2-cell study through
`hvdfast launch local` (horovodrun, 2 workers) that resumes a half-finished grid and reports it."""
import csv
import json
import subprocess

import pytest

from hvdfast import config
from hvdfast.config import ConfigError
from hvdfast.study import grid, report

from conftest import ROOT, TRAIN, hvdfast_cmd, launcher_env


def test_the_mnist_study_grid():
    spec = grid.load(ROOT / "launch/studies/mnist.yaml")
    cells = grid.cells(spec)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids)) == 1 + 3 * 6 - 1 + 1 + 1  # base once, 3 optimizers x 6 batches, fp32, 1 worker
    by = {c.id: c for c in cells}
    assert by["sgd-b64-bf16-w2"].axis == "base"
    top = by["lamb-b2048-bf16-w2"]
    assert (top.per_worker, top.accum) == (256, 4)  # 1,024 per worker, accumulated 4 x 256
    assert (by["sgd-b64-bf16-w1"].per_worker, by["sgd-b64-fp32-w2"].precision) == (64, "fp32")
    # every cell's overrides make a valid config, with the cell's optimizer, batch and precision
    for c in cells:
        cfg = config.load(ROOT / spec.recipe, grid.overrides(spec, c, "/tmp/x"))
        assert (cfg.optim.name, cfg.train.precision, cfg.train.epochs) == (c.optimizer, c.precision, spec.epochs)
        assert cfg.data.batch_size * cfg.horovod.backward_passes_per_step * c.workers == c.batch


def test_grid_overrides_order_and_refusals(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("recipe: launch/configs/digits-cpu.yaml\nepochs: 3\nbatch: 64\n"
                 "variants: {long: [train.epochs=9, data.image_size=40, data.val_resize=40]}\n")
    spec = grid.load(p)
    cell = [c for c in grid.cells(spec) if c.variant == "long"][0]
    cfg = config.load(ROOT / spec.recipe, grid.overrides(spec, cell, "/tmp/x"))
    assert (cfg.train.epochs, cfg.data.image_size, cfg.data.batch_size) == (9, 40, 32)  # the variant wins the budget
    p.write_text("recipe: launch/configs/digits-cpu.yaml\nepochs: 3\nbatch: 65\n")
    with pytest.raises(ConfigError, match="does not split over 2 workers"):
        grid.cells(grid.load(p))
    p.write_text("recipe: launch/configs/digits-cpu.yaml\nepoch: 3\n")
    with pytest.raises(ConfigError, match="unknown study key.*epoch"):
        grid.load(p)


def test_a_cell_is_done_only_with_a_summary_under_the_current_overrides(tmp_path):
    from hvdfast.study import _done
    p = tmp_path / "s.yaml"
    p.write_text("recipe: launch/configs/digits-cpu.yaml\nepochs: 3\n")
    spec = grid.load(p)
    cell = grid.cells(spec)[0]
    run = tmp_path / "cells" / cell.id
    run.mkdir(parents=True)
    (run / "cell.json").write_text(json.dumps({"overrides": grid.overrides(spec, cell, run)}))
    assert not _done(spec, cell, run)                                   # no summary yet
    (run / "metrics.jsonl").write_text('{"kind": "summary", "step": 3}\n')
    assert _done(spec, cell, run)
    p.write_text("recipe: launch/configs/digits-cpu.yaml\nepochs: 4\n")  # the spec changed: train it again
    assert not _done(grid.load(p), cell, run)


def test_mnist_data_set(tmp_path):
    from PIL import Image

    from hvdfast.data import embedded
    counts = embedded.write("mnist", tmp_path)
    assert counts == {"train": 4000, "val": 1000}
    for split, n in (("train", 400), ("val", 100)):  # stratified: 500 per class, 80 / 20
        assert [len(list((tmp_path / split / str(c)).glob("*.jpg"))) for c in range(10)] == [n] * 10
    img = Image.open(next((tmp_path / "val" / "7").glob("*.jpg")))
    assert (img.size, img.mode) == ((28, 28), "RGB")
    train = {f.name for f in (tmp_path / "train").rglob("*.jpg")}
    assert not train & {f.name for f in (tmp_path / "val").rglob("*.jpg")}


def test_a_study_trains_resumes_and_reports(short_digits_dir, tmp_path):
    """Two cells (SGD and LARS at global batch 64 = 2 workers x 16 x 2 accumulated passes), 1 epoch of ResNet-18
    each. The first call trains only SGD (--only) and says the grid is unfinished; LARS's cell is then left
    half-written, as a killed job leaves it; the second call keeps SGD's run and trains LARS again from scratch."""
    spec = tmp_path / "study.yaml"
    overrides = [o for o in TRAIN[2:] if not o.startswith(("train.epochs", "train.target_top1"))]
    spec.write_text(f"recipe: {ROOT / 'launch/configs/digits-cpu.yaml'}\nepochs: 1\ntarget_top1: 30\nbatch: 64\n"
                    f"max_batch_per_worker: 16\nprecision: bf16\n"
                    f"overrides: {json.dumps(overrides + [f'data.dir={short_digits_dir}'])}\n"
                    "optimizers:\n  sgd: [optim.name=sgd]\n  lars: [optim.name=lars, optim.lr=4.0, "
                    "optim.lr_batch=3200, optim.lr_scaling=sqrt]\nbatches: [64]\n")
    out = tmp_path / "out"
    cmd = hvdfast_cmd("study", str(spec), "--out", str(out))
    first = subprocess.run(cmd + ["--only", "sgd"], env=launcher_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 cell(s) without a result (lars-b64-bf16-w2); rerun the same command" in first.stderr
    sgd, lars = out / "cells/sgd-b64-bf16-w2", out / "cells/lars-b64-bf16-w2"
    sgd_metrics = (sgd / "metrics.jsonl").read_bytes()
    lars.mkdir(parents=True)
    (lars / "metrics.jsonl").write_text('{"kind": "train", "step": 5}\n')  # killed mid-cell: no summary

    second = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 cells in" in second.stdout and "1 done, 1 to train" in second.stdout
    assert (sgd / "metrics.jsonl").read_bytes() == sgd_metrics           # the finished cell was not retrained
    s_sgd, s_lars = report.summary(sgd), report.summary(lars)
    assert s_lars["ranks_agree"] and s_lars["workers"] == 2 and s_lars["global_batch"] == 64
    cfg = config.load(lars / "config.yaml")
    assert (cfg.optim.name, cfg.data.batch_size, cfg.horovod.backward_passes_per_step) == ("lars", 16, 2)
    rows = {r["cell"]: r for r in csv.DictReader((out / "study.csv").open())}
    assert rows.keys() == {"sgd-b64-bf16-w2", "lars-b64-bf16-w2"}
    for r, s in ((rows["sgd-b64-bf16-w2"], s_sgd), (rows["lars-b64-bf16-w2"], s_lars)):
        assert (float(r["final_top1"]), int(r["steps"]), r["status"]) == (round(s["final_top1"], 2), s["steps"],
                                                                           "done")
    assert float(rows["lars-b64-bf16-w2"]["peak_lr"]) == pytest.approx(4.0 * (64 / 3200) ** 0.5, rel=1e-3)
    md = (out / "study.md").read_text()
    assert md.count("\n| sgd-b64") == 1 and md.count("\n| lars-b64") == 1
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.summary(out / "cells" / "nothing") is None


@pytest.mark.parametrize("launch,target,says", [
    ("--nodes 2", "local", "hvdfast launch local refuses the study's cells: --nodes does not apply to launch local"),
    ("--controller gloo", "mpirun", "hvdfast launch mpirun refuses the study's cells: launch mpirun runs Horovod's "
                                    "MPI controller, not --controller gloo"),
])
def test_launch_options_the_target_refuses_stop_the_study_before_its_first_cell(tmp_path, launch, target, says):
    """Once, in one line, not once per cell after each one's launch."""
    out = tmp_path / "study"
    p = subprocess.run(hvdfast_cmd("study", "launch/studies/mnist.yaml", "--target", target, "--launch", launch,
                                   "--out", str(out)), capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=launcher_env())
    assert p.returncode == 2 and p.stderr.startswith(f"hvdfast: error: {says}"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out.exists()
