"""Weight-decay groups by tensor rank: every parameter with ndim <= 1 (BN weights and biases, all biases) gets
no weight decay and no LARS trust ratio. Name matching ('bn' in name) misses torchvision's downsample.1.*."""
from __future__ import annotations

import torch


def split(named_params, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def names_by_group(model: torch.nn.Module, weight_decay: float = 1e-4) -> dict[str, list[str]]:
    """Parameter names in each group (for tests and the run log)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: [ids[id(p)] for p in g["params"]] for g in split(model.named_parameters(), weight_decay)}
