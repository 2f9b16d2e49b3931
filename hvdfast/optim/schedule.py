"""Learning-rate recipe as pure functions of the optimizer step: LR scaling with the global batch (Goyal et al.
2017: linear), linear warmup, then cosine / poly / step decay.

The clock is MLPerf's (NVIDIA's ResNet-50 PolySchedule, mlcommons/training_results_v4.0): the LR of 0-based
step s is the LR of update n = s + 1, so warmup reaches the peak at n = W and the decay ends at end_lr at n = T:

    n <= W:  warmup_from + (peak - warmup_from) * n / W
    n >  W:  end_lr + (peak - end_lr) * f((n - W) / (T - W)),   f = (1 - x)^power | (1 + cos(pi x)) / 2
"""
from __future__ import annotations

import bisect
import math

from ..config import CHOICES


def scaled_lr(lr: float, global_batch: int, *, lr_batch: int = 256, scaling: str = "linear") -> float:
    """The peak LR at `global_batch` for an LR stated at `lr_batch` images per step."""
    ratio = global_batch / lr_batch
    if scaling == "linear":
        return lr * ratio
    if scaling == "sqrt":
        return lr * math.sqrt(ratio)
    if scaling == "none":
        return lr
    raise ValueError(f"unknown lr scaling '{scaling}' (one of {', '.join(CHOICES['optim.lr_scaling'])})")


def peak_lr(ocfg, global_batch: int) -> float:
    """The recipe's peak LR at this run's global batch."""
    return scaled_lr(ocfg.lr, global_batch, lr_batch=ocfg.lr_batch, scaling=ocfg.lr_scaling)


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, schedule: str = "cosine",
          poly_power: float = 2.0, milestones: tuple = (), gamma: float = 0.1, warmup_from: float = 0.0,
          end_lr: float = 0.0) -> float:
    """LR at optimizer step `step` (0-based): linear warmup from warmup_from to base_lr, then decay to end_lr at
    total_steps (cosine, poly), or x gamma at each milestone step (step), or constant."""
    n = step + 1  # updates made once this step is applied
    if warmup_steps > 0 and n <= warmup_steps:
        return warmup_from + (base_lr - warmup_from) * n / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** bisect.bisect_right(list(milestones), step)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (n - warmup_steps) / span))
    if schedule == "cosine":
        return end_lr + (base_lr - end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return end_lr + (base_lr - end_lr) * (1.0 - progress) ** poly_power
    raise ValueError(f"unknown schedule '{schedule}'")


def _steps(ocfg, steps_per_epoch: int, epochs: float) -> tuple[int, int]:
    """(optimizer steps of the run, of its warmup)."""
    return max(1, round(epochs * steps_per_epoch)), round(ocfg.warmup_epochs * steps_per_epoch)


def warmup_note(ocfg, *, steps_per_epoch: int, epochs: float) -> str | None:
    """A line for the run log when the warmup is as long as the run: the LR never reaches its peak, or reaches it
    at the last step, and the decay never starts (a short smoke run of a long recipe)."""
    total, warmup = _steps(ocfg, steps_per_epoch, epochs)
    if warmup < total or ocfg.schedule == "constant" and warmup == total:
        return None
    decay = "" if ocfg.schedule == "constant" else f", and the {ocfg.schedule} decay never starts"
    return (f"optim.warmup_epochs={ocfg.warmup_epochs:g} covers the whole run (train.epochs={epochs:g}): the LR "
            f"only warms up, to {total / warmup:.0%} of its peak at the last step{decay}; lower "
            f"optim.warmup_epochs for a run this short")


def bounds_note(ocfg, *, global_batch: int) -> str | None:
    """A line for the run log when the LR the schedule starts from or decays to is not below the peak at this run's
    global batch (the peak scales with the batch; these two are absolute): the warmup then ramps down, or the decay
    rises. A run can mean neither."""
    peak = peak_lr(ocfg, global_batch)
    if ocfg.schedule in ("cosine", "poly") and ocfg.end_lr >= peak:
        return (f"optim.end_lr={ocfg.end_lr:g} is not below the peak LR {peak:.4g} at this run's global batch "
                f"({global_batch}): the {ocfg.schedule} schedule rises to it instead of decaying; lower optim.end_lr")
    if ocfg.warmup_epochs > 0 and ocfg.warmup_from > peak:
        return (f"optim.warmup_from={ocfg.warmup_from:g} is above the peak LR {peak:.4g} at this run's global batch "
                f"({global_batch}): the warmup ramps down to the peak; lower optim.warmup_from")
    return None


def from_config(ocfg, *, global_batch: int, steps_per_epoch: int, epochs: float):
    """Bind the recipe to this run: returns (lr_fn(step) -> lr, total_steps)."""
    base = peak_lr(ocfg, global_batch)
    total, warmup = _steps(ocfg, steps_per_epoch, epochs)
    milestones = tuple(round(e * steps_per_epoch) for e in ocfg.step_epochs)

    def fn(step: int) -> float:
        return lr_at(step, base_lr=base, total_steps=total, warmup_steps=warmup, schedule=ocfg.schedule,
                     poly_power=ocfg.poly_power, milestones=milestones, gamma=ocfg.step_gamma,
                     warmup_from=ocfg.warmup_from, end_lr=ocfg.end_lr)
    return fn, total
