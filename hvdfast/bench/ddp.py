"""The peer a user would otherwise pick: a torchrun + DistributedDataParallel training step at its best.

Started by torchrun on every host (`hvdfast bench cluster` does it; by hand:
`torchrun --nnodes 2 --nproc-per-node 1 --node-rank R --master-addr HOST0 -m hvdfast.bench.ddp --hook powersgd`).
The same model, input and per-worker settings as the hvdfast variant of `hvdfast bench train` (its recipe's
train.precision, `--precision`: auto is bf16 autocast on a CPU that computes bf16 natively, else fp32, and fp16
AMP on GPU; channels_last, one torch thread per owned core, SGD with momentum), and DDP's own best knobs:
gradient_as_bucket_view, bucket_cap_mb, and its communication hooks (torch.distributed.algorithms.ddp_comm_hooks):
  none      DDP as most users run it (fp32 allreduce)
  fp16/bf16 fp16_compress_hook / bf16_compress_hook (half the bytes)
  powersgd  powerSGD_hook, rank --powersgd-rank, error feedback and warm start on, starting after the warm-up
            steps (its start_powerSGD_iter), so every timed step is compressed
DDP waits for its allreduces inside backward, so the step is not split further; `hvdfast bench cluster` derives
the communication share from the step against the same worker alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from ..argtypes import amount, count
from ..config import CHOICES

HOOKS = ("none", "fp16", "bf16", "powersgd")


def register_hook(ddp: DistributedDataParallel, hook: str, rank: int, start_iter: int):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    if hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif hook == "powersgd":
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                            start_powerSGD_iter=max(2, start_iter), use_error_feedback=True,
                                            warm_start=True)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)


def main(argv=None) -> int:
    from .worker import guarded
    p = argparse.ArgumentParser(prog="python -m hvdfast.bench.ddp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hook", choices=HOOKS, default="none")
    p.add_argument("--precision", choices=CHOICES["train.precision"], default="auto",
                   help="train.precision of the hvdfast variant beside it (auto: as `hvdfast train` picks)")
    p.add_argument("--powersgd-rank", type=count(1), default=4)
    p.add_argument("--bucket-cap-mb", type=amount(0, above=True), default=25.0,
                   help="DDP's bucket size (its default: 25)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=count(1), default=8)
    p.add_argument("--image-size", type=count(1), default=224)
    p.add_argument("--steps", type=count(1), default=5)
    p.add_argument("--warmup", type=count(0), default=2)
    p.add_argument("--threads", type=count(0), default=0, help="torch threads (0: cores / local workers)")
    p.add_argument("--interleave", action="store_true",
                   help="time this worker alone and every worker alone at once between the run's steps")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return guarded(args, lambda: _run(args), rank=int(os.environ.get("RANK", 0)))  # torchrun's


def _run(args) -> int:
    from .. import engine, models
    from ..train import param_digest
    from .worker import UNTIMED_CYCLES, cpus, interleaved, lone_figures, net_bytes_sent, peak_rss_mb, synthetic_batch
    tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, size = tdist.get_rank(), tdist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
        else torch.device("cpu")
    prec = engine.precision_for(args.precision, device)
    model = models.to_channels_last(models.build(args.model, 1000).to(device))
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True, bucket_cap_mb=args.bucket_cap_mb,
                                  device_ids=[device.index] if device.type == "cuda" else None)
    register_hook(ddp, args.hook, args.powersgd_rank, args.warmup)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    x, y = synthetic_batch(args, rank, device, channels_last=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, prec=prec) -> float:
        t0 = time.perf_counter()
        with prec.autocast():
            loss = torch.nn.functional.cross_entropy(net(x), y)
        if prec.scaler is not None:
            prec.scaler.scale(loss).backward()  # DDP: returns once every bucket's allreduce has finished
            prec.scaler.step(optimizer)
            prec.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        sync()
        return time.perf_counter() - t0

    times = [one_step(ddp, opt) for _ in range(args.warmup)]
    sent0 = net_bytes_sent()
    lone = {}
    if not args.interleave:
        times += [one_step(ddp, opt) for _ in range(args.steps)]
        sent = net_bytes_sent() - sent0
    else:  # the worker alone and the floor between the run's steps (bench/worker.py): a model of its own
        solo = models.to_channels_last(models.build(args.model, 1000).to(device))
        solo_opt = torch.optim.SGD(solo.parameters(), lr=0.01, momentum=0.9)
        solo_prec = engine.precision_for(args.precision, device)  # a loss scaler of its own (fp16)
        one_step(solo, solo_opt, solo_prec)  # its warm-up, every rank at once
        sent = 0

        def together() -> float:
            nonlocal sent
            before = net_bytes_sent()  # the run's steps only: not the barriers' bytes between them
            times.append(one_step(ddp, opt))
            if len(times) > args.warmup + UNTIMED_CYCLES:
                sent += net_bytes_sent() - before
            return times[-1]

        lone = lone_figures(interleaved(args.steps, rank, size, tdist.barrier, together,
                                        lambda: one_step(solo, solo_opt, solo_prec)), args.batch)
    step = statistics.median(times[args.warmup + (UNTIMED_CYCLES if args.interleave else 0):])
    mine = {**lone, "rank": rank, "threads": torch.get_num_threads(), "cpus": cpus(), "step_s": step,
            "img_s": args.batch / step, "wire_mb_per_step": sent / args.steps / 1e6,
            "peak_rss_mb": peak_rss_mb(),
            "precision": prec.name, "hook": args.hook, "params_sha256": param_digest(model), "device": str(device)}
    ranks: list = [None] * size
    tdist.all_gather_object(ranks, mine)
    if rank == 0:
        Path(args.out).write_text(json.dumps(ranks))
    # every rank past its last collective before the group goes: rank 0 aborted now and then in teardown
    # ("terminate called without an active exception", 1 run in 5 here) when it destroyed the group first
    tdist.barrier()
    tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from hvdfast.process import run_process
    run_process(main)
