"""The best validation's weights (train.keep_best): RUN_DIR/best.pt, what a user takes away from a run.

Before it, a run's summary named its best epoch ("best top-1 99.17% (epoch 4)") while only the newest
train.keep_checkpoints checkpoints were kept, with no class names in them: the best weights of a run that ended
lower than its best were gone, and using any of them meant knowing the label order and the validation's
preprocessing.
"""
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hvdfast import checkpoint, config, models
from hvdfast.checkpoint import CheckpointError
from hvdfast.data.torchvision import val_transform
from hvdfast.run.fit import FitState, _best_file, keep_best_weights

from conftest import train_args


def test_a_run_keeps_its_best_validation_and_the_readme_recipe_scores_it(short_digits_dir, tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(train_args(short_digits_dir, run, "train.precision=fp32", "train.epochs=3",
                                    "train.checkpoint_every=0"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    vals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "val"]
    top = max(r["top1"] for r in vals)
    first_best = next(r for r in vals if r["top1"] == top)  # a later tie is no improvement
    assert f"best weights: {run / 'best.pt'} (top-1 {top:.2f}%, epoch {first_best['epoch']};" in out.stdout

    # the README's recipe ("Using the trained model"), on every validation image
    model, best = models.from_best(run / "best.pt")
    assert (best["epoch"], best["step"], best["top1"]) == (first_best["epoch"], first_best["step"], top)
    assert best["classes"] == sorted(p.name for p in (short_digits_dir / "train").iterdir())
    prep = val_transform(best["config"]["data"]["image_size"], best["config"]["data"]["val_resize"])
    files = sorted((short_digits_dir / "val").glob("*/*.jpg"))
    from PIL import Image
    images = torch.stack([prep(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([best["classes"].index(f.parent.name) for f in files])
    with torch.no_grad():
        correct = int((model(images).argmax(1) == labels).sum())
    assert (correct, len(files)) == (round(top * first_best["images"] / 100), first_best["images"])

    # written with the run's last checkpoint (checkpoint_every=0): the model as it was at the best validation
    final = checkpoint.load(checkpoint.list_checkpoints(run / "checkpoints")[0])
    weights = torch.load(run / "best.pt", weights_only=True)["model"]
    same = all(torch.equal(weights[k], final["model"][k]) for k in weights)
    assert same == (first_best["epoch"] == vals[-1]["epoch"])
    # weights only: not a checkpoint to continue from
    with pytest.raises(CheckpointError, match="holds the weights of a run's best validation only"):
        checkpoint.load(run / "best.pt")


def _job(tmp_path, model, keep_best=True):
    cfg = config.replace(config.Config(), "train.keep_best", keep_best)
    data = SimpleNamespace(num_classes=2, classes=("cat", "dog"))
    return SimpleNamespace(cfg=cfg, model=model, run_dir=tmp_path,
                           plan=SimpleNamespace(info=SimpleNamespace(is_main=True), data=data))


def test_the_best_is_copied_when_no_checkpoint_is_written_at_it(tmp_path):
    # a validation beat the best at step 10 with no checkpoint there; training went on; the checkpoint at step 20
    # writes step 10's weights, not the model as it is then
    model = torch.nn.Linear(3, 2)
    job, st = _job(tmp_path, model), FitState(step=10, best_top1=91.0, best_epoch=1)
    keep_best_weights(job, st)
    at_best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    st.step = 20
    checkpoint.store_best(tmp_path, _best_file(job, st, best_now=False))
    best = torch.load(tmp_path / checkpoint.BEST, weights_only=True)
    assert best["step"] == 10 and best["classes"] == ["cat", "dog"] and best["top1"] == 91.0
    assert all(torch.equal(best["model"][k], at_best[k]) for k in at_best)
    assert st.best_weights is None and _best_file(job, st, best_now=False) is None  # written once
    # train.keep_best=false: no copy, no file
    off = _job(tmp_path, model, keep_best=False)
    keep_best_weights(off, st)
    assert st.best_weights is None and _best_file(off, st, best_now=True) is None
