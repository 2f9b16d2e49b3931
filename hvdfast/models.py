"""Model construction: any torchvision classification model by name, set up for large-batch training."""
from __future__ import annotations

import torch

from .config import ConfigError


def check_name(name: str) -> None:
    """model.name must be one of torchvision's classification models: a ConfigError line naming the closest ones
    otherwise (every rank meets it in setup; rank 0 says it)."""
    import difflib

    import torchvision.models as tvm
    names = sorted(tvm.list_models(module=tvm))  # the classification models (not detection, segmentation, ...)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = (f"did you mean {', '.join(close)}?" if close else
                f"torchvision's classification models include {', '.join(names[:8])}, ... "
                f"(torchvision.models.list_models(module=torchvision.models))")
        raise ConfigError(f"unknown model.name '{name}'; {hint}")


def build(name: str, num_classes: int, zero_init_residual: bool = True) -> torch.nn.Module:
    import torchvision.models as tvm

    check_name(name)
    ctor = tvm.get_model_builder(name)
    kwargs = {"num_classes": num_classes, "weights": None}
    if zero_init_residual and name.startswith(("resnet", "resnext", "wide_resnet")):
        # Goyal et al. 2017: each residual block starts as identity (last BN gamma = 0).
        kwargs["zero_init_residual"] = True
    return ctor(**kwargs)


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC weights. Call after Horovod's parameter broadcast (it refuses NHWC-strided tensors)."""
    return model.to(memory_format=torch.channels_last)


def compiled(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """The module to call for forward passes: torch.compile'd when enabled, else `model` itself.

    Keep `model` for state_dict, Horovod's parameter list and checkpoints: the compiled wrapper shares its
    parameters but prefixes their names. Horovod's gradient hooks sit on the parameters' accumulators, outside the
    compiled graph (and its synchronize() reduces any gradient whose hook did not fire), so every gradient is still
    averaged; they arrive together at the end of the compiled backward rather than layer by layer.
    """
    return torch.compile(model) if enabled else model
