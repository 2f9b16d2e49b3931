"""`hvdfast train train.elastic=true`: Horovod elastic training, launched by
`horovodrun -np N --min-np A --max-np B --host-discovery-script SCRIPT hvdfast train ...`.

Training continues with the surviving workers when one dies, and takes new or returning workers in when the
discovery script reports them (or a blacklisted host's cooldown ends). Two Horovod 0.28.1 traps on scale-up are
avoided in dist: the response cache is off in elastic runs (a warm cache on survivors and a cold one on the joiner
made their first collectives disagree, and Gloo aborted), and the optimizer state exists before the state sync (on
an empty state Horovod steps the optimizer with zero gradients after the weight broadcast, and weight decay then
moved the joiner's weights away from everyone else's). At the end the ranks compare parameter digests.

The state that survives a reset is Horovod's TorchState (model, optimizer, images seen), committed in memory every
`train.checkpoint_every_steps` steps (default 10 here); after each reset the data shards, the global batch and the
LR schedule are rebuilt for the new world size, and the schedule position is kept in images seen. Horovod's
elastic state sync broadcasts tensors as they are, and Horovod refuses NHWC-strided ones, so an elastic run keeps
the model in NCHW (channels_last off). Gradient buckets (horovod.bucket_mb) are off too: Horovod's TorchState
syncs a torch optimizer, and its DistributedOptimizer is the one tested through resets.
"""
from __future__ import annotations

import time

import torch

from . import config, data, dist, engine, models, optim
from .metrics import Reporter, eval_metrics, window_metrics
from .train import consistency


def run(cfg: config.Config) -> dict:
    if cfg.model.channels_last:
        cfg = config.replace(cfg, "model.channels_last", False)
    if cfg.horovod.bucket_mb > 0:
        cfg = config.replace(cfg, "horovod.bucket_mb", 0.0)
    info = dist.init(cfg.horovod, threads=cfg.train.threads, elastic=True)
    torch.manual_seed(cfg.train.seed)
    ctx: dict = {}

    def rebuild(d=None) -> None:
        """(Re)build everything that depends on the world size (`d`: loaders already built for it)."""
        i = dist.current()
        d = d or data.build(cfg, i)
        global_batch = cfg.data.batch_size * i.size
        spe = d.train.steps_per_epoch
        lr_fn, total = optim.schedule.from_config(cfg.optim, global_batch=global_batch, steps_per_epoch=spe,
                                                  epochs=cfg.train.epochs)
        ctx.update(info=i, data=d, global_batch=global_batch, spe=spe, lr_fn=lr_fn,
                   total_images=total * global_batch)
        if ctx["rep"].enabled != i.is_main:  # after a reset another worker may be rank 0
            ctx["rep"].close()
            ctx["rep"] = Reporter(_run_dir(cfg), i.is_main, "lines", 0)
        if i.rank == 0:
            ctx["rep"].line(f"elastic: {i.size} worker(s), global batch {global_batch}, {spe} steps/epoch")

    ctx["rep"] = Reporter(_run_dir(cfg), info.is_main, "lines", 0)
    d0 = data.build(cfg, info)
    model = models.build(cfg.model.name, d0.num_classes, cfg.model.zero_init_residual).to(info.device)
    opt = dist.wrap_optimizer(optim.build(model, cfg.optim), model, cfg.horovod)
    prec = engine.precision_for(cfg.train.precision, info.device)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    state = dist.elastic_state(model, opt, images=0)
    rebuild(d0)
    state.register_reset_callbacks([rebuild])
    commit_every = cfg.train.checkpoint_every_steps or 10
    t0 = time.perf_counter()

    @dist.elastic_run
    def loop(state) -> None:
        while state.images < ctx["total_images"]:
            gb, spe = ctx["global_batch"], ctx["spe"]
            step = state.images // gb
            epoch, skip = divmod(step, spe)
            remaining = min(spe - skip, (ctx["total_images"] - state.images + gb - 1) // gb)

            def on_step(at_step: int) -> None:
                state.images += gb
                if at_step % commit_every == 0:
                    state.commit()  # Horovod: in-memory snapshot + check for added / removed hosts

            def on_log(at_step: int, window) -> None:
                m = window_metrics(dist.allreduce_sum(window, name=f"el.metrics.{at_step}"), ctx["info"].size)
                ctx["rep"].line(f"epoch {epoch} step {at_step} loss {m['loss']:.4f} {m['img_s']:.1f} img/s "
                                f"({ctx['info'].size} workers)")

            engine.train_epoch(model, opt, ctx["data"].train.epoch(epoch, skip=skip), steps=remaining,
                               first_step=step, lr_fn=ctx["lr_fn"], criterion=criterion, prec=prec,
                               loss_divisor=dist.loss_divisor(cfg.horovod),  # the world size after any reset
                               clip_grad_norm=cfg.optim.clip_grad_norm, log_every=cfg.train.log_every,
                               on_log=on_log, on_step=on_step)
            state.commit()

    loop(state)
    dist.average_buffers(model)
    ev = eval_metrics(dist.allreduce_sum(engine.evaluate(model, ctx["data"].val.epoch(0), prec, criterion),
                                         name="el.eval"))
    total = time.perf_counter() - t0
    ranks = consistency(model, ctx["info"].size)
    summary = {"final_top1": ev["top1"], "train_time_s": total, "workers": ctx["info"].size,
               "images_seen": state.images, "ranks_agree": len({r["params_sha256"] for r in ranks}) == 1,
               "ranks": ranks}
    ctx["rep"].record("summary", state.images // ctx["global_batch"], summary,
                      show=f"SUMMARY elastic: final top-1 {ev['top1']:.2f}% ({ev['images']} images) | "
                           f"train time {total:.1f} s | finished with {ctx['info'].size} worker(s)"
                           + ("" if summary["ranks_agree"] else " | WARNING: the ranks' parameters differ"))
    ctx["rep"].close()
    return {**summary, "model": model, "rank": ctx["info"].rank}


def _run_dir(cfg):
    from pathlib import Path
    return Path(cfg.train.run_dir)
