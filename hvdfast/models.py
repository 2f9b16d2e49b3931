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


def build(name: str, num_classes: int, zero_init_residual: bool = True,
          image_size: int | None = None, batch: int = 2) -> torch.nn.Module:
    """The model, from fresh weights. With `image_size` (training's data.image_size): a vision transformer is built
    for that size, and any model is tried on a batch of that size (check_input; `batch`: the run's images per worker
    per backward pass), so a size the model cannot take (ViT's patches, MaxViT's windows, Inception's stem), or
    BatchNorm given one image whose features end 1x1, is one line at setup, not a traceback per rank at the first
    step."""
    import torchvision.models as tvm

    check_name(name)
    ctor = tvm.get_model_builder(name)
    kwargs = {"num_classes": num_classes, "weights": None}
    if zero_init_residual and name.startswith(("resnet", "resnext", "wide_resnet")):
        # Goyal et al. 2017: each residual block starts as identity (last BN gamma = 0).
        kwargs["zero_init_residual"] = True
    if image_size is not None and name.startswith("vit_"):
        kwargs["image_size"] = image_size  # torchvision's VisionTransformer sizes its position embedding by it
    if name in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False  # training's forward then returns the logits, as every other model's does
        # torchvision's own initialisation, named: its default is to change (a FutureWarning in every run's log)
        kwargs["init_weights"] = True
    try:
        model = ctor(**kwargs)
    except (AssertionError, ValueError) as exc:  # e.g. an image size that is no multiple of ViT's patch
        if image_size is None:
            raise
        raise ConfigError(f"model.name={name} cannot be built for {image_size} px images (data.image_size): "
                          f"{_first_line(exc)}") from None
    if image_size is not None:
        check_input(model, name, image_size, batch)
    return model


def from_best(path) -> tuple[torch.nn.Module, dict]:
    """A run's best.pt (train.keep_best) as a model to use: built as training built it (so any model.name loads),
    its weights in, eval mode, on the CPU in fp32; and what came with it: classes (names in label order), top1,
    epoch, step and the run's config (config['data'] has the validation's image_size and val_resize, which
    hvdfast.data.torchvision.val_transform turns into the validation's preprocessing)."""
    from .checkpoint import CheckpointError
    try:
        best = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"'{path}' cannot be read ({_first_line(exc)}).") from None
    if not isinstance(best, dict) or best.get("kind") != "best weights":
        raise CheckpointError(f"'{path}' is not a best.pt written by hvdfast train (train.keep_best).")
    model = build(best["model_name"], best["num_classes"], image_size=best["config"]["data"]["image_size"])
    model.load_state_dict(best["model"])
    return model.eval(), {k: v for k, v in best.items() if k != "model"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def check_input(model: torch.nn.Module, name: str, image_size: int, batch: int = 2) -> None:
    """Two images of the run's size through the model as training runs it, then one where the run trains on one
    image per worker (`batch` 1: BatchNorm then has a single value per channel wherever the features are down to
    1x1, which torch refuses in training). No gradient; the BatchNorm statistics the passes update are put back,
    and the random numbers a dropout draws come from a forked generator, so the model and the run's random stream
    are as they were."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            try:
                out = model(torch.zeros(2, 3, image_size, image_size))
            except Exception as exc:
                raise ConfigError(f"model.name={name} cannot take {image_size}x{image_size} images "
                                  f"(data.image_size): {_first_line(exc)}. Set data.image_size to a size it takes "
                                  f"(torchvision's models take 224), or pick another model.") from None
            if batch == 1:
                try:
                    model(torch.zeros(1, 3, image_size, image_size))
                except Exception as exc:
                    raise ConfigError(f"model.name={name} cannot train on one image per worker (data.batch_size=1) "
                                      f"at {image_size} px: {_first_line(exc)}. Set data.batch_size to 2 or more, "
                                      f"or a larger data.image_size.") from None
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ConfigError(f"model.name={name} returns {type(out).__name__} in training, not a batch of logits; "
                          f"pick another model.")


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
