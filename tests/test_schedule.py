"""optim/schedule.py: the LR as a pure function of the step, and every ImageNet recipe's LR against the schedule
its source published (MLPerf's code exactly; Goyal et al.'s prose within one step of its ramp)."""
import math
from pathlib import Path

import pytest

from hvdfast import config
from hvdfast.config import OptimConfig
from hvdfast.optim.schedule import bounds_note, from_config, lr_at, scaled_lr, warmup_note

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_TRAIN = 1_281_167  # images in ILSVRC-2012's training set


def test_lr_scaling_rules():
    assert scaled_lr(0.1, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 8192) == pytest.approx(3.2)                       # linear: Goyal et al.'s k = 32
    assert scaled_lr(0.01, 1024, lr_batch=256, scaling="sqrt") == pytest.approx(0.02)
    assert scaled_lr(11.0, 6400, lr_batch=3200, scaling="none") == 11.0     # stated at its own batch
    with pytest.raises(ValueError, match="unknown lr scaling"):
        scaled_lr(0.1, 256, scaling="cube")


def test_warmup_then_cosine():
    kw = dict(base_lr=1.0, total_steps=100, warmup_steps=10, schedule="cosine")
    assert lr_at(0, **kw) == pytest.approx(0.1)        # first update: 1/10 of the ramp
    assert lr_at(9, **kw) == pytest.approx(1.0)        # the 10th update is at the peak
    assert lr_at(10, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 90)))
    assert lr_at(54, **kw) == pytest.approx(0.5)       # update 55: half way through the decay
    assert lr_at(99, **kw) == pytest.approx(0.0, abs=1e-12)  # the last update reaches end_lr
    assert lr_at(99, **kw, end_lr=0.01) == pytest.approx(0.01)
    assert lr_at(4, **kw, warmup_from=0.5) == pytest.approx(0.75)


def test_poly_and_step_and_constant():
    assert lr_at(59, base_lr=2.0, total_steps=100, warmup_steps=20, schedule="poly",
                 poly_power=2.0) == pytest.approx(2.0 * 0.5 ** 2)
    kw = dict(base_lr=1.0, total_steps=100, warmup_steps=0, schedule="step", milestones=(30, 60), gamma=0.1)
    assert [lr_at(s, **kw) for s in (29, 30, 59, 60, 99)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    assert lr_at(70, base_lr=0.3, total_steps=100, warmup_steps=5, schedule="constant") == 0.3


def test_bound_to_a_run():
    ocfg = OptimConfig(lr=0.2, warmup_epochs=2, schedule="cosine")
    fn, total = from_config(ocfg, global_batch=512, steps_per_epoch=10, epochs=5)
    assert total == 50
    assert fn(19) == pytest.approx(0.4)               # end of warmup: 0.2 * 512 / 256
    assert fn(0) == pytest.approx(0.02)
    assert fn(35) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 16 / 30)))


def _recipe(name: str):
    return config.load(ROOT / "launch/configs" / f"{name}.yaml")


def _mlperf_poly(iteration: int, *, base_lr: float, warmup: int, total: int, end_lr=1e-4, power=2) -> float:
    """MLPerf v4.0 NVIDIA ResNet-50 (common/fit.py, PolySchedule.__call__), as published: MXNet calls it with
    the update count, 1 for the first update."""
    if iteration <= warmup:
        return base_lr * iteration / warmup
    return end_lr + (base_lr - end_lr) * (1 - (iteration - warmup) / (total - warmup)) ** power


def test_a_warmup_as_long_as_the_run_is_said():
    """A short run of a recipe whose warmup is longer (the digits recipe's 1 epoch at train.epochs=0.5) never
    reached its peak LR without a word."""
    o = OptimConfig(warmup_epochs=1.0, schedule="cosine")
    assert warmup_note(o, steps_per_epoch=45, epochs=0.5) == (
        "optim.warmup_epochs=1 covers the whole run (train.epochs=0.5): the LR only warms up, to 49% of its peak at "
        "the last step, and the cosine decay never starts; lower optim.warmup_epochs for a run this short")
    fn, total = from_config(OptimConfig(lr=0.1, lr_batch=256, warmup_epochs=1.0), global_batch=256,
                            steps_per_epoch=45, epochs=0.5)
    assert fn(total - 1) == pytest.approx(0.1 * 22 / 45)  # what the note says: 22 of 45 warmup steps, 49%
    assert warmup_note(o, steps_per_epoch=45, epochs=1.0).startswith("optim.warmup_epochs=1 covers the whole run "
                                                                      "(train.epochs=1): the LR only warms up, to "
                                                                      "100% of its peak")
    assert warmup_note(o, steps_per_epoch=45, epochs=1.1) is None
    assert warmup_note(OptimConfig(warmup_epochs=0.0), steps_per_epoch=45, epochs=0.01) is None
    assert warmup_note(OptimConfig(warmup_epochs=1.0, schedule="constant"), steps_per_epoch=45, epochs=1.0) is None



def test_an_end_or_start_lr_not_below_the_peak_is_said():
    """end_lr and warmup_from are absolute, the peak scales with the global batch: an end_lr at or above the peak
    made the cosine decay rise, a warmup_from above it made the warmup ramp down, without a word."""
    o = OptimConfig(lr=0.1, lr_batch=256, lr_scaling="linear", end_lr=0.1, schedule="cosine")
    assert bounds_note(o, global_batch=128) == (
        "optim.end_lr=0.1 is not below the peak LR 0.05 at this run's global batch (128): the cosine schedule rises "
        "to it instead of decaying; lower optim.end_lr")
    fn, total = from_config(o, global_batch=128, steps_per_epoch=10, epochs=2)
    assert fn(total - 1) > fn(total // 2)  # what it says: the LR rises
    assert bounds_note(o, global_batch=512) is None  # peak 0.2
    assert bounds_note(OptimConfig(lr=0.1, lr_batch=256, lr_scaling="linear", end_lr=0.1, schedule="step"),
                       global_batch=128) is None  # step decays by its factor, not to end_lr
    up = OptimConfig(lr=0.1, lr_batch=256, lr_scaling="none", warmup_epochs=1.0, warmup_from=0.5)
    assert bounds_note(up, global_batch=256) == (
        "optim.warmup_from=0.5 is above the peak LR 0.1 at this run's global batch (256): the warmup ramps down to "
        "the peak; lower optim.warmup_from")
    assert bounds_note(OptimConfig(warmup_epochs=0.0, warmup_from=100.0), global_batch=256) is None

@pytest.mark.parametrize("recipe,gpus,per_gpu,lr,warmup_epochs,epochs", [
    ("imagenet-rn50-lars-3200", 8, 400, 11.0, 2, 37),       # config_DGXH100.sh
    ("imagenet-rn50-lars-40k", 2528, 16, 19.4, 24, 70),     # config_DGXH100_multi_316x8x16.sh
])
def test_mlperf_lars_recipes_follow_mlperf_schedule(recipe, gpus, per_gpu, lr, warmup_epochs, epochs):
    cfg = _recipe(recipe)
    assert (cfg.optim.name, cfg.data.batch_size, cfg.train.epochs) == ("lars", per_gpu, epochs)
    # MLPerf's epoch: ceil(int(images / workers) / batch) steps (fit.py _get_lr_scheduler)
    steps_per_epoch = math.ceil(int(IMAGENET_TRAIN / gpus) / per_gpu)
    fn, total = from_config(cfg.optim, global_batch=gpus * per_gpu, steps_per_epoch=steps_per_epoch,
                            epochs=cfg.train.epochs)
    warmup = warmup_epochs * steps_per_epoch
    assert total == epochs * steps_per_epoch
    steps = [0, 1, warmup // 2, warmup - 2, warmup - 1, warmup, warmup + 1, total // 2, total - 2, total - 1]
    ours = [fn(s) for s in steps]
    published = [_mlperf_poly(s + 1, base_lr=lr, warmup=warmup, total=total) for s in steps]
    assert ours == pytest.approx(published, rel=1e-12, abs=1e-15)
    assert max(fn(s) for s in range(total)) == pytest.approx(lr)
    assert fn(total - 1) == pytest.approx(1e-4)


def test_goyal_recipe_follows_the_paper():
    """Goyal et al. 2017, section 2 and 5.1: at k x 256 images per step the LR warms up linearly from 0.1 to
    0.1 k over 5 epochs, then drops x0.1 at epochs 30, 60 and 80 of 90. The 8k run: k = 32 (32 GPUs x 256 here)."""
    cfg = _recipe("imagenet-rn50-sgd")
    global_batch = 32 * cfg.data.batch_size
    assert global_batch == 8192
    steps_per_epoch = IMAGENET_TRAIN // global_batch                  # 156: full batches per epoch
    fn, total = from_config(cfg.optim, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
                            epochs=cfg.train.epochs)
    warmup = 5 * steps_per_epoch
    ramp = (3.2 - 0.1) / warmup                                        # the paper's "constant amount" per step

    def paper(step: int) -> float:  # its prose, with the first step at 0.1
        if step < warmup:
            return 0.1 + ramp * step
        return 3.2 * 0.1 ** sum(step >= e * steps_per_epoch for e in (30, 60, 80))

    # the ramp: the paper does not say whether its first update counts as 0 or 1; ours counts it as 1 (MLPerf)
    for s in (0, 1, warmup // 2, warmup - 1):
        assert fn(s) == pytest.approx(paper(s), abs=ramp * 1.0000001)
    for epoch, lr in ((5, 3.2), (29.99, 3.2), (30, 0.32), (59.99, 0.32), (60, 0.032), (80, 0.0032), (89.99, 0.0032)):
        s = math.ceil(epoch * steps_per_epoch)
        assert fn(s) == pytest.approx(paper(s), rel=1e-12) == pytest.approx(lr, rel=1e-12)
    assert total == 90 * steps_per_epoch
