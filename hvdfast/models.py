"""Model construction: any torchvision classification model by name, set up for large-batch training."""
from __future__ import annotations

import torch


def build(name: str, num_classes: int, zero_init_residual: bool = True) -> torch.nn.Module:
    import torchvision.models as tvm

    try:
        ctor = tvm.get_model_builder(name)
    except ValueError:
        options = ", ".join(sorted(tvm.list_models(module=tvm))[:12])
        raise ValueError(f"unknown model '{name}'; torchvision classification models include {options}, ...") \
            from None
    kwargs = {"num_classes": num_classes, "weights": None}
    if zero_init_residual and name.startswith(("resnet", "resnext", "wide_resnet")):
        # Goyal et al. 2017: each residual block starts as identity (last BN gamma = 0).
        kwargs["zero_init_residual"] = True
    return ctor(**kwargs)


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC weights. Call after Horovod's parameter broadcast (it refuses NHWC-strided tensors)."""
    return model.to(memory_format=torch.channels_last)
