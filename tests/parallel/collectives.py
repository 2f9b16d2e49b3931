"""Started by the real launchers (horovodrun / mpirun) from tests/test_parallel.py.

Each rank computes collectives and one optimizer step per compression, and writes what it computed to
OUT/rank<r>.json; the pytest side asserts on those values (a wrong value on any rank fails the test).
"""
import hashlib
import json
import sys
from pathlib import Path

import torch

from hvdfast import dist
from hvdfast.config import HorovodConfig


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))


def param_vector(model) -> list:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]).tolist()


def grads_after_step(compression: str, rank: int, op: str = "average", bucket_mb: float = 0.0, **knobs) -> dict:
    cfg = HorovodConfig(compression=compression, op=op, bucket_mb=bucket_mb, **knobs)
    model = tiny_model(seed=100 + rank)          # different init on every rank ...
    dist.broadcast_model(model)                  # ... until rank 0's weights are broadcast
    after_bcast = param_vector(model)
    model = model.to(memory_format=torch.channels_last)
    opt = dist.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model, cfg)
    torch.manual_seed(1000 + rank)               # different data on every rank
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    local = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    (loss / dist.loss_divisor(cfg)).backward()  # op=prescaled: divided by the worker count, then summed
    opt.synchronize()
    reduced = [p.grad.detach().clone() for p in model.parameters()]
    channels_last_kept = all(g.is_contiguous(memory_format=torch.channels_last)
                             for g in reduced if g.dim() == 4)
    with opt.skip_synchronize():
        opt.step()
    return {"after_broadcast": after_bcast, "params": param_vector(model),
            "local_grad": torch.cat([g.reshape(-1).double() for g in local]).tolist(),
            "reduced_grad": torch.cat([g.reshape(-1).double() for g in reduced]).tolist(),
            "channels_last_kept": channels_last_kept}


def powersgd_rejoin(rank: int) -> dict:
    """PowerSGD after a step, its Q then made different on every rank (as a joiner's fresh one is), and
    dist.rejoin for a world of 4 workers."""
    cfg = HorovodConfig(compression="powersgd", op="prescaled", bucket_mb=1 / 1024, powersgd_rank=1)
    model = tiny_model(seed=7)
    opt = dist.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, cfg)
    torch.manual_seed(2000 + rank)
    loss = model(torch.randn(4, 3, 8, 8)).square().mean() / dist.loss_divisor(cfg)
    loss.backward()
    opt.step()
    reducers = [b.reducer for b in opt.buckets if b.reducer.matrices]
    error_before = max(float(r.error.abs().max()) for r in reducers)
    for r in reducers:
        r.q_wire.add_(float(rank))
    q_root = [r.q_wire.tolist() for r in reducers] if rank == 0 else None
    dist.rejoin(opt, 4)
    return {"q": [r.q_wire.tolist() for r in reducers], "q_root_before": q_root, "error_before": error_before,
            "error_after": max(float(r.error.abs().max()) for r in reducers),
            "local_scale": [r.local_scale for r in reducers]}


def fp16_values(rank: int) -> torch.Tensor:
    """3,000,005 fp16 values from 1e-9 to 4e4 (subnormals, large values whose sums overflow to inf), ending with
    pairs whose sum Gloo's float16 assignment once dropped (20736 + 7840 = 7840): in the last 5, after the
    kernels' 8-wide loop."""
    g = torch.Generator().manual_seed(1234 + rank)
    n = 3_000_000
    x = torch.randn(n, generator=g) * torch.logspace(-9, 4.6, n)
    return torch.cat([x, torch.full((5,), (20736.0, 7840.0)[rank % 2])]).half()


def fp16_sum(size: int) -> dict:
    """Horovod's fp16 Sum (the wire type of fp16 compression) against IEEE fp16 addition of the ranks' values
    (each partial sum exact in fp32, rounded once per addition, as an fp16 adder does; with the tests' 2 ranks one
    addition, so the ring's order cannot matter)."""
    import horovod.torch as hvd
    got = hvd.allreduce(fp16_values(hvd.rank()), op=hvd.Sum, name="t.fp16sum")
    want = fp16_values(0)
    for r in range(1, size):
        want = (want.float() + fp16_values(r).float()).half()
    differ = got.view(torch.int16) != want.view(torch.int16)
    return {"elements": got.numel(), "differ": int(differ.sum()), "tail": got[-5:].tolist(),
            "inf": int(got.isinf().sum()), "subnormal": int(((got.abs() < 6.1e-5) & (got != 0)).sum())}


def main(out: Path) -> None:
    info = dist.init(HorovodConfig())
    r = info.rank
    res = {"rank": r, "size": info.size, "controller": info.controller}
    res["sum"] = dist.allreduce_sum([r + 1.0, 2.0 * r], name="t.sum").tolist()
    res["mean"] = dist.allreduce_mean(torch.tensor([float(r), 10.0 * r]), name="t.mean").tolist()
    res["bcast"] = dist.broadcast_object({"from": r, "payload": list(range(r, r + 3))}, root=0, name="t.obj")
    # a checkpoint-like state (tensors of several dtypes, a Path, 24 MB): every rank gets rank 0's, bit for bit
    g = torch.Generator().manual_seed(r)
    state = {"path": Path(f"/run/rank{r}.pt"), "step": 7 * r,
             "model": {"w": torch.randn(6_000_000, generator=g), "n": torch.arange(r, r + 5)},
             "half": torch.randn(33, generator=g).to(torch.bfloat16)}
    got = dist.broadcast_object(state, root=0, name="t.state")
    res["bcast_state"] = [str(got["path"]), got["step"], got["model"]["n"].tolist(),
                          hashlib.sha256(got["model"]["w"].numpy().tobytes()).hexdigest(),
                          hashlib.sha256(got["half"].view(torch.int16).numpy().tobytes()).hexdigest(),
                          str(got["half"].dtype)]
    res["gathered"] = dist.allgather_object(r * r, name="t.gather")
    res["steps"] = {c: grads_after_step(c, r) for c in ("none", "fp16", "bf16")}
    res["prescaled"] = {"divisor": dist.loss_divisor(HorovodConfig(op="prescaled")),
                        **{c: grads_after_step(c, r, "prescaled") for c in ("none", "fp16")}}
    # 1 KiB buckets: the tiny model's 6 gradients land in 3 flat buffers (conv weight, BN + bias, linear)
    res["buckets"] = {c: grads_after_step(c, r, "average", bucket_mb=1 / 1024) for c in ("none", "fp16")}
    res["buckets_prescaled"] = {"none": grads_after_step("none", r, "prescaled", bucket_mb=1 / 1024)}
    # PowerSGD at rank 1: the conv and linear weights travel as rank-1 factors, the vectors whole
    res["powersgd"] = {op: grads_after_step("powersgd", r, op, bucket_mb=1 / 1024, powersgd_rank=1)
                       for op in ("average", "prescaled")}
    res["powersgd_rejoin"] = powersgd_rejoin(r)
    res["fp16_sum"] = fp16_sum(info.size)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{r}.json").write_text(json.dumps(res))
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    from hvdfast.process import lighten_exit
    lighten_exit()  # the process ends here: no exit-time GC over torch's objects
