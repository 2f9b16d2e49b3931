"""hvdfast/models.py: the model a run's data.image_size can train, or one line saying why not."""
import pytest
import torch

from hvdfast import models
from hvdfast.config import ConfigError


def test_the_input_check_leaves_the_model_as_built():
    torch.manual_seed(0)
    model = models.build("resnet18", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    models.check_input(model, "resnet18", 32)
    assert not model.training  # the mode it had
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_input_check_draws_nothing_from_the_runs_random_stream():
    model = models.build("googlenet", 10)  # dropout in training mode
    torch.manual_seed(1)
    models.check_input(model, "googlenet", 64)
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)


def test_a_vision_transformer_is_built_for_the_runs_image_size():
    model = models.build("vit_b_16", 10, image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_inception_trains_without_its_auxiliary_classifier():
    model = models.build("inception_v3", 10, image_size=80)
    model.train()
    assert isinstance(model(torch.zeros(2, 3, 80, 80)), torch.Tensor)


@pytest.mark.parametrize("name,size,says", [
    ("vit_b_16", 40, "model.name=vit_b_16 cannot be built for 40 px images (data.image_size): AssertionError: "
                     "Input shape indivisible by patch size!"),
    ("maxvit_t", 32, "model.name=maxvit_t cannot take 32x32 images (data.image_size): RuntimeError:"),
    ("inception_v3", 32, "model.name=inception_v3 cannot take 32x32 images (data.image_size): RuntimeError:"),
])
def test_an_image_size_the_model_cannot_take_is_one_line(name, size, says):
    with pytest.raises(ConfigError) as err:
        models.build(name, 10, image_size=size)
    assert str(err.value).startswith(says) and "\n" not in str(err.value)


def test_one_image_per_worker_where_batchnorm_would_see_one_value_is_one_line():
    """ResNet-18 at 32 px ends in 1x1 features: with one image per worker its last BatchNorm has one value per
    channel, which torch refuses in training (a traceback per rank at the first step, before this check). At 64 px
    (2x2 features) one image trains."""
    with pytest.raises(ConfigError) as err:
        models.build("resnet18", 10, image_size=32, batch=1)
    assert str(err.value) == (
        "model.name=resnet18 cannot train on one image per worker (data.batch_size=1) at 32 px: ValueError: Expected "
        "more than 1 value per channel when training, got input size torch.Size([1, 512, 1, 1]). Set "
        "data.batch_size to 2 or more, or a larger data.image_size.")
    torch.manual_seed(0)
    model = models.build("resnet18", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    models.check_input(model, "resnet18", 64, batch=1)  # both passes, the model left as built
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
