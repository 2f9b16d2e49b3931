import math

import pytest

from hvdfast.config import OptimConfig
from hvdfast.optim.schedule import from_config, lr_at, scaled_lr


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 8192) == pytest.approx(3.2)


def test_warmup_then_cosine():
    kw = dict(base_lr=1.0, total_steps=100, warmup_steps=10, schedule="cosine")
    assert lr_at(0, **kw) == pytest.approx(0.1)        # first warmup step
    assert lr_at(9, **kw) == pytest.approx(1.0)        # warmup ends at the peak
    assert lr_at(10, **kw) == pytest.approx(1.0)       # decay starts from the peak
    assert lr_at(55, **kw) == pytest.approx(0.5)       # half way through the decay
    assert lr_at(100, **kw) == pytest.approx(0.0, abs=1e-12)


def test_poly_and_step_and_constant():
    assert lr_at(60, base_lr=2.0, total_steps=100, warmup_steps=20, schedule="poly",
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
    assert fn(35) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
