import torch
import torchvision

from hvdfast.optim import param_groups


def test_resnet50_no_decay_group_is_every_bn_and_bias():
    model = torchvision.models.resnet50(num_classes=10)
    groups = param_groups.names_by_group(model)
    no_decay, decay = set(groups["no_decay"]), set(groups["decay"])
    bn_names = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)
                for p in ("weight", "bias")}
    assert bn_names and bn_names <= no_decay
    assert "fc.bias" in no_decay
    # The name-matching bug (ffcv-imagenet): downsample BNs are not called 'bn'.
    assert "layer1.0.downsample.1.weight" in no_decay and "layer4.0.downsample.1.bias" in no_decay
    conv_linear = {f"{m}.weight" for m, mod in model.named_modules()
                   if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))}
    assert conv_linear == decay
    assert len(no_decay) + len(decay) == len(list(model.parameters()))


def test_weight_decay_values():
    model = torchvision.models.resnet18(num_classes=3)
    g = param_groups.split(model.named_parameters(), 1e-4)
    assert g[0]["weight_decay"] == 1e-4 and g[1]["weight_decay"] == 0.0
