"""Setup: config -> dist -> data -> model -> optimizer -> Horovod wrapper, the same for every way of training.

`Job` is what a run trains with; `Plan` is the part that depends on the world size (data shards, global batch,
steps, LR schedule), rebuilt after an elastic reset.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import checkpoint, config, data, dist, engine, models, optim


@dataclass
class Plan:
    """What the world size decides."""
    info: dist.DistInfo
    data: data.Data
    accum: int                      # micro-batches per optimizer step (horovod.backward_passes_per_step)
    global_batch: int               # images per optimizer step, all workers: batch_size x workers x accum
    steps_per_epoch: int            # optimizer steps per epoch
    total_steps: int                # optimizer steps of the whole run
    lr_fn: Callable[[int], float]   # optimizer step -> learning rate


@dataclass
class Job:
    cfg: config.Config
    run_dir: Path
    plan: Plan
    model: torch.nn.Module
    forward: torch.nn.Module        # the model, compiled where model.compile is on (training steps only)
    opt: object                     # Horovod's DistributedOptimizer or hvdfast's BucketedOptimizer
    prec: engine.Precision
    criterion: torch.nn.Module
    notes: list                     # lines for the run log (tuned settings left out, resume notes, ...)
    writer: checkpoint.Writer = field(default_factory=checkpoint.Writer)  # checkpoints, in the background
    folder_lock: Optional[int] = None  # rank 0: the descriptor of its hold on the run folder (summary.run_folder)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def plan(cfg: config.Config, info: dist.DistInfo, collectives: bool = True) -> Plan:
    """Shards, global batch, steps and LR schedule for the current world. collectives=False: build the data without
    any cross-rank exchange (a worker joining an elastic job builds it alone, while the others train)."""
    d = data.build(cfg, info, collectives=collectives)
    accum = cfg.horovod.backward_passes_per_step
    steps_per_epoch = d.train.steps_per_epoch // accum
    if steps_per_epoch < 1:
        raise data.DataError(f"one epoch gives {d.train.steps_per_epoch} batches per worker, fewer than "
                             f"backward_passes_per_step={accum}; lower data.batch_size or backward_passes_per_step.")
    global_batch = cfg.data.batch_size * info.size * accum
    lr_fn, total_steps = optim.schedule.from_config(cfg.optim, global_batch=global_batch,
                                                    steps_per_epoch=steps_per_epoch, epochs=cfg.train.epochs)
    return Plan(info=info, data=d, accum=accum, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, lr_fn=lr_fn)


def setup(cfg: config.Config, notes=(), elastic: bool = False) -> Job:
    """Everything a run trains with, from fresh weights (resume.py then loads a checkpoint into it)."""
    notes = list(notes)
    if elastic and cfg.model.channels_last:
        # Horovod's elastic state sync broadcasts tensors as they are, and Horovod refuses NHWC-strided ones.
        cfg = config.replace(cfg, "model.channels_last", False)
        notes.append("elastic: model.channels_last off (Horovod's elastic state sync needs contiguous tensors)")
    if cfg.train.deterministic and cfg.horovod.fusion_threshold_mb > 0:
        # Which tensors share a fused buffer depends on when each became ready, and a tensor's offset in the
        # buffer decides the order of its sums (the ring's chunk it falls in at 3+ ranks; Adasum's split of the
        # buffer at any size): two identical runs differed in the last bits (tests/test_reproducible.py).
        cfg = config.replace(cfg, "horovod.fusion_threshold_mb", 0.0)
        notes.append("train.deterministic: Horovod's tensor fusion off (which tensors share a fused buffer depends "
                     "on timing, and with it the order of the sums)")
    info = dist.init(cfg.horovod, threads=cfg.train.threads, elastic=elastic)
    oversubscribed = dist.threads_note(cfg.train.threads, dist.cores_owned(info.local_size))
    if oversubscribed:
        notes.append(oversubscribed)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    p = plan(cfg, info, collectives=not elastic)
    notes.extend(n for n in (optim.schedule.warmup_note(cfg.optim, steps_per_epoch=p.steps_per_epoch,
                                                       epochs=cfg.train.epochs),
                             optim.schedule.bounds_note(cfg.optim, global_batch=p.global_batch)) if n)
    model = models.build(cfg.model.name, p.data.num_classes, cfg.model.zero_init_residual, cfg.data.image_size,
                         cfg.data.batch_size)
    model.to(p.info.device)
    if not elastic:
        # Horovod: identical starting weights everywhere (before channels_last: Horovod needs contiguous tensors).
        # Elastic: Horovod's state sync broadcasts them at the start and after every reset, and a worker joining a
        # running job must not call a collective the others are not in.
        dist.broadcast_model(model)
    if cfg.model.channels_last:
        models.to_channels_last(model)
    opt = optim.build(model, cfg.optim)
    forward = models.compiled(model, cfg.model.compile)  # training steps only; evaluation runs eager
    prec = engine.precision_for(cfg.train.precision, p.info.device)
    emulated = engine.emulated_note(prec.name, p.info.device.type, engine.cpu_bf16_native(), engine.cpu_fp16_native())
    if emulated:
        notes.append(emulated)
    if prec.scaler is not None and cfg.horovod.op == "adasum":  # auto on a GPU (config.load refuses fp16 asked for)
        raise config.ConfigError(config.ADASUM_WITH_A_LOSS_SCALER)
    opt = dist.wrap_optimizer(opt, model, cfg.horovod)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    return Job(cfg=cfg, run_dir=Path(cfg.train.run_dir), plan=p, model=model, forward=forward, opt=opt, prec=prec,
               criterion=criterion, notes=notes)
