"""Learning-rate recipe as pure functions of the optimizer step (Goyal et al. 2017: linear scaling + warmup)."""
from __future__ import annotations

import bisect
import math


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """Linear scaling rule: lr is given per 256 images."""
    return lr_per_256 * global_batch / 256.0


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, schedule: str = "cosine",
          poly_power: float = 2.0, milestones: tuple = (), gamma: float = 0.1) -> float:
    """LR at optimizer step `step` (0-based): linear warmup from base_lr/warmup_steps to base_lr, then decay to 0
    at total_steps (cosine, poly) or x gamma at each milestone step (step), or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** bisect.bisect_right(list(milestones), step)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return base_lr * (1.0 - progress) ** poly_power
    raise ValueError(f"unknown schedule '{schedule}'")


def from_config(ocfg, *, global_batch: int, steps_per_epoch: int, epochs: float):
    """Bind the recipe to this run: returns (lr_fn(step) -> lr, total_steps)."""
    base = scaled_lr(ocfg.lr, global_batch)
    total = max(1, round(epochs * steps_per_epoch))
    warmup = round(ocfg.warmup_epochs * steps_per_epoch)
    milestones = tuple(round(e * steps_per_epoch) for e in ocfg.step_epochs)

    def fn(step: int) -> float:
        return lr_at(step, base_lr=base, total_steps=total, warmup_steps=warmup, schedule=ocfg.schedule,
                     poly_power=ocfg.poly_power, milestones=milestones, gamma=ocfg.step_gamma)
    return fn, total
