"""Optimizers: SGD (torch), LARS and LAMB (timm), over the decay / no-decay parameter groups."""
from __future__ import annotations

import torch

from . import param_groups, schedule  # noqa: F401


def build(model: torch.nn.Module, ocfg) -> torch.optim.Optimizer:
    groups = param_groups.split(model.named_parameters(), ocfg.weight_decay)
    lr = ocfg.lr  # replaced every step by the schedule
    if ocfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=ocfg.momentum, nesterov=ocfg.nesterov)
    # timm's LARS and LAMB apply the trust ratio only where a group's weight_decay != 0 unless always_adapt is set:
    # with optim.weight_decay=0 the weight matrices would silently lose it (LARS would become momentum SGD at LARS's
    # learning rate). The decay group (weights) always adapts; the no-decay group (BN, biases) never does.
    for g in groups:
        g["always_adapt"] = g["name"] == "decay"
    if ocfg.name == "lars":
        from timm.optim import Lars
        return Lars(groups, lr=lr, momentum=ocfg.momentum, nesterov=ocfg.nesterov, trust_coeff=ocfg.trust_coeff)
    if ocfg.name == "lamb":
        from timm.optim import Lamb
        return Lamb(groups, lr=lr)
    raise ValueError(f"unknown optimizer '{ocfg.name}'")
