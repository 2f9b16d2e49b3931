"""Wrapping the user's optimizer so that its gradients are reduced across the workers: Horovod's
DistributedOptimizer (per-tensor hooks, fused and compressed), or gradient buckets (buckets.py)."""
from __future__ import annotations

import copy

import torch

from ..config import HorovodConfig
from . import compression
from .buckets import BucketedOptimizer
from .core import _h


def wrap_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, cfg: HorovodConfig):
    if cfg.bucket_mb > 0:
        # Horovod: the same averaged gradients, reduced as a few flat buckets instead of one call per tensor.
        return BucketedOptimizer(optimizer, model, bucket_mb=cfg.bucket_mb, compression_name=cfg.compression,
                                 op=cfg.op, backward_passes_per_step=cfg.backward_passes_per_step,
                                 powersgd_rank=cfg.powersgd_rank, workers=_h().size(),
                                 last_bucket_mb=cfg.last_bucket_mb)
    hvd = _h()
    # Horovod: allreduce gradients as backward produces them (hooks), fused and compressed.
    return hvd.DistributedOptimizer(
        optimizer,
        named_parameters=model.named_parameters(),
        compression=compression.get(cfg.compression),
        backward_passes_per_step=cfg.backward_passes_per_step,
        # prescaled: gradients arrive already divided by the worker count (loss_divisor), so a Sum is the average
        op={"average": hvd.Average, "prescaled": hvd.Sum, "adasum": hvd.Adasum}[cfg.op],
        gradient_predivide_factor=cfg.gradient_predivide_factor,
    )


def loss_divisor(cfg: HorovodConfig) -> int:
    """What to divide the loss by before backward so that the allreduce's result is the gradient average:
    the current worker count with op=prescaled (Horovod then only sums), else 1 (Horovod averages)."""
    return _h().size() if cfg.op == "prescaled" else 1


def init_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer its state tensors, zeroed, without changing any parameter or option.

    Horovod's state sync initialises an empty optimizer state by stepping it with zero gradients, *after* the
    model broadcast: with weight decay that step moves the weights just received, so a worker joining a running
    elastic job kept weights that differ from everyone else's. Zeroed state is what a fresh optimizer starts from
    (SGD/LARS momentum, Adam/LAMB moments and step counts), so nothing else changes."""
    if optimizer.state_dict()["state"]:
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]  # gradient buckets' views stay the gradients
    options = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    # The wrapped optimizer's own step, without any collective (a worker joining an elastic job calls this alone):
    # the DistributedOptimizer's step would allreduce (as Horovod does it), and so would the buckets'.
    if isinstance(optimizer, BucketedOptimizer):
        optimizer.optimizer.step()
    elif optimizer.__module__.startswith("horovod"):
        super(optimizer.__class__, optimizer).step()
    else:
        optimizer.step()
    with torch.no_grad():
        for p, s, g in zip(params, saved, grads):
            p.copy_(s)
            p.grad = g
    for g, o in zip(optimizer.param_groups, options):
        for k in [k for k in g if k != "params" and k not in o]:
            del g[k]                       # e.g. timm LAMB's group step counter
        g.update(o)
    for st in optimizer.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                v.zero_()


def elastic_state(model: torch.nn.Module, optimizer, scaler=None, **counters):
    """Horovod elastic state: model + optimizer (+ the fp16 loss scaler) + counters, committed in host memory,
    synced on resets."""
    # Horovod: TorchState broadcasts from rank 0 on every reset, so new workers join with current weights.
    init_optimizer_state(optimizer)
    # TorchState keeps what is a torch.optim.Optimizer as optimizer state and pickles anything else whole with
    # broadcast_object: handed the gradient buckets, it pickled their flat buffers and the model's parameters on
    # every sync (measured: the first sync never finished). Their plain optimizer holds the whole state.
    plain = optimizer.optimizer if isinstance(optimizer, BucketedOptimizer) else optimizer
    if scaler is not None:
        _register_scaler_handler()
        counters["scaler"] = scaler
    return _h().elastic.TorchState(model=model, optimizer=plain, **counters)


def _register_scaler_handler() -> None:
    """Teach Horovod's TorchState the loss scaler (its documented handler registry), once per process.

    The scale and its growth counter decide each rank's gradients: every rank scales its loss by its own scale, the
    allreduce sums the scaled gradients, and each rank divides by its own scale again. A worker joining an elastic
    job came with a fresh scaler (scale 65536, growth counter 0) beside survivors whose scale had halved at each
    overflow (on the digits, fp16 on a CPU: to 32768 or 8192 within 10 steps), so with different scales the ranks
    would apply different gradients and their weights drift apart; with equal scales, the joiner would double its
    scale 2,000 steps after the others. Synced from rank 0 as the weights are, and rolled back with them when a
    worker dies."""
    hstate = _h().elastic.state  # Horovod's own module, as TorchState is reached

    class ScalerStateHandler(hstate.StateHandler):
        def __init__(self, scaler):
            super().__init__(scaler)
            self._saved = copy.deepcopy(scaler.state_dict())

        def save(self):
            self._saved = copy.deepcopy(self.value.state_dict())

        def restore(self):
            self.value.load_state_dict(self._saved)

        def sync(self):
            self.value.load_state_dict(hstate.broadcast_object(self.value.state_dict(), root_rank=0))

    registry = hstate.get_handler_registry()
    if not any(kind is torch.amp.GradScaler for kind, _ in registry):
        hstate.set_handler_registry([*registry, (torch.amp.GradScaler, ScalerStateHandler)])


def rejoin(optimizer, workers: int) -> None:
    """Collective, on every rank of a new elastic world before it trains: state the wire format keeps across steps
    (PowerSGD's Q and error) made consistent for the new workers."""
    if isinstance(optimizer, BucketedOptimizer):
        optimizer.rejoin(workers)


def forget_step(optimizer) -> None:
    """After an elastic reset: no allreduce in flight, no partial gradient (a worker may have died mid-step)."""
    if isinstance(optimizer, BucketedOptimizer):
        optimizer.forget_step()
    else:
        # Horovod's DistributedOptimizer cleared its handles in load_state_dict when the state was restored; a
        # reset for added hosts happens at a commit, between steps, with none in flight
        optimizer.zero_grad()
