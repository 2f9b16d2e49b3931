import copy
import pytest
import torch

from hvdfast import optim
from hvdfast.config import OptimConfig


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))


def test_lars_step_matches_hand_computed_trust_ratio():
    model = _model()
    cfg = OptimConfig(name="lars", lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coeff=0.02)
    opt = optim.build(model, cfg)
    lr = 0.5
    for g in opt.param_groups:
        g["lr"] = lr
    x = torch.randn(8, 5)
    model(x).pow(2).mean().backward()
    w0 = model[0].weight.detach().clone()
    g0 = model[0].weight.grad.detach().clone()
    b0, gb = model[0].bias.detach().clone(), model[0].bias.grad.detach().clone()
    gamma0, ggamma = model[1].weight.detach().clone(), model[1].weight.grad.detach().clone()
    opt.step()
    # decay group: trust ratio eta * |w| / (|g| + wd * |w|), applied to (g + wd * w); first momentum step = grad
    trust = 0.02 * w0.norm() / (g0.norm() + 1e-3 * w0.norm())
    assert 0 < trust < 1
    expected_w = w0 - lr * trust * (g0 + 1e-3 * w0)
    torch.testing.assert_close(model[0].weight.detach(), expected_w, rtol=1e-5, atol=1e-7)
    # no-decay group (ndim <= 1): plain SGD, neither weight decay nor trust ratio
    torch.testing.assert_close(model[0].bias.detach(), b0 - lr * gb)
    torch.testing.assert_close(model[1].weight.detach(), gamma0 - lr * ggamma)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_trust_ratio_survives_zero_weight_decay(name):
    """timm applies the trust ratio only where a group's weight decay is non-zero unless always_adapt is set:
    with optim.weight_decay=0 LARS silently became momentum SGD at LARS's learning rate."""
    model = _model()
    opt = optim.build(model, OptimConfig(name=name, lr=0.5, weight_decay=0.0, trust_coeff=0.02))
    for g in opt.param_groups:
        g["lr"] = 0.5
    model(torch.randn(8, 5)).pow(2).mean().backward()
    w0, g0 = model[0].weight.detach().clone(), model[0].weight.grad.detach().clone()
    b0, gb = model[0].bias.detach().clone(), model[0].bias.grad.detach().clone()
    opt.step()
    if name == "lars":  # first momentum step = the trust-scaled gradient
        expected = w0 - 0.5 * (0.02 * w0.norm() / g0.norm()) * g0
    else:  # first Adam step: m_hat / sqrt(v_hat) = sign(g); LAMB scales it by |w| / |update|
        update = g0 / (g0.abs() + 1e-6)
        expected = w0 - 0.5 * (w0.norm() / update.norm()) * update
    torch.testing.assert_close(model[0].weight.detach(), expected, rtol=1e-3, atol=1e-5)  # eps: LAMB's 1e-6
    if name == "lars":  # the no-decay group still does not adapt: plain SGD
        torch.testing.assert_close(model[0].bias.detach(), b0 - 0.5 * gb)


@pytest.mark.parametrize("name", ["sgd", "lars", "lamb"])
def test_every_optimizer_reduces_a_simple_loss(name):
    model = _model()
    # LARS scales the decay group by its trust ratio (eta * |w| / |g|), so it takes a larger nominal lr.
    lr = 0.5 if name == "lars" else 0.05
    opt = optim.build(model, OptimConfig(name=name, lr=lr, weight_decay=1e-4, trust_coeff=0.02))
    for g in opt.param_groups:
        g["lr"] = lr
    torch.manual_seed(1)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("name", ["sgd", "lars", "lamb"])
def test_elastic_optimizer_state_init_changes_nothing_but_the_state(name):
    """dist.init_optimizer_state (run before Horovod's elastic state sync) creates zeroed state and leaves the
    weights and options alone; the first real step then equals a fresh optimizer's first step."""
    from hvdfast import dist
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    twin = copy.deepcopy(model)
    cfg = OptimConfig(name=name, lr=0.5, weight_decay=0.1, momentum=0.9)
    opt, ref = optim.build(model, cfg), optim.build(twin, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    options = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    dist.init_optimizer_state(opt)
    assert opt.state_dict()["state"], "state was not created"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == options
    x = torch.randn(5, 3, 8, 8)
    for m, o in ((model, opt), (twin, ref)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
