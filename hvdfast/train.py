"""`hvdfast train`: wires config -> dist -> data -> model -> optimizer -> engine -> metrics / checkpoints.

Every rank runs this same function; only rank 0 writes files and prints (through Reporter and `say`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, config, data, dist, engine, models, optim, tune
from .metrics import Reporter, eval_metrics, window_metrics
from .watchdog import Watchdog


class TrainingError(RuntimeError):
    """A run that must stop (e.g. loss diverged); the message says what to try."""


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def versions(info: dist.DistInfo) -> dict:
    import torchvision
    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "horovod": dist.build_info(), "host": platform.node(), "cpu_cores": torch.get_num_threads(),
           "workers": info.size, "controller": info.controller, "device": str(info.device)}
    try:
        import nvidia.dali as dali_mod
        out["dali"] = dali_mod.__version__
    except Exception:
        out["dali"] = None
    return out


def param_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in order: equal on all ranks when data parallelism kept them in step."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def consistency(model: torch.nn.Module, size: int) -> list[dict]:
    """Every rank's host and parameter digest (rank order), gathered at the end of a run."""
    mine = {"host": platform.node(), "params_sha256": param_digest(model)}
    got = dist.allgather_object(mine, name="consistency") if size > 1 else [mine]
    return [{"rank": r, **g} for r, g in enumerate(got)]


def run(cfg: config.Config) -> dict:
    info = dist.init(cfg.horovod, threads=cfg.train.threads)
    run_dir = Path(cfg.train.run_dir)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    d = data.build(cfg, info)
    accum = cfg.horovod.backward_passes_per_step
    steps_per_epoch = d.train.steps_per_epoch // accum
    if steps_per_epoch < 1:
        raise data.DataError(f"one epoch gives {d.train.steps_per_epoch} batches per worker, fewer than "
                             f"backward_passes_per_step={accum}; lower data.batch_size or backward_passes_per_step.")
    global_batch = cfg.data.batch_size * info.size * accum
    lr_fn, total_steps = optim.schedule.from_config(cfg.optim, global_batch=global_batch,
                                                    steps_per_epoch=steps_per_epoch, epochs=cfg.train.epochs)

    model = models.build(cfg.model.name, d.num_classes, cfg.model.zero_init_residual)
    resume_path, state, notes = (checkpoint.find_resume(run_dir, cfg.train.resume) if info.is_main
                                 else (None, None, []))
    if info.size > 1:
        # Horovod: rank 0 alone reads the checkpoint (no shared file system assumed) and sends it to all.
        resume_path, state = dist.broadcast_object((resume_path, state), name="resume.state")
    if state is not None:
        checkpoint.check_compatible(state, resume_path, cfg.model.name, d.num_classes)
        model.load_state_dict(state["model"])
    model.to(info.device)
    # Horovod: identical starting weights everywhere (before channels_last: Horovod needs contiguous tensors).
    dist.broadcast_model(model)
    if cfg.model.channels_last:
        models.to_channels_last(model)
    opt = optim.build(model, cfg.optim)
    forward = models.compiled(model, cfg.model.compile)  # training steps only; evaluation runs eager
    prec = engine.precision_for(cfg.train.precision, info.device)
    opt = dist.wrap_optimizer(opt, model, cfg.horovod)
    if state is not None:
        # After wrapping: Horovod's DistributedOptimizer is a new instance with empty state.
        opt.load_state_dict(state["optimizer"])
        if prec.scaler is not None and state.get("scaler"):
            prec.scaler.load_state_dict(state["scaler"])
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    step = int(state["step"]) if state is not None else 0
    wd = Watchdog(run_dir, info.rank, info.size, cfg.train.hang_timeout_s)
    rep = Reporter(run_dir, info.is_main, cfg.train.progress, total_steps)
    saved_batch = int(state.get("global_batch", global_batch)) if state is not None else global_batch
    if saved_batch != global_batch:
        # A different world size (or batch): keep the images seen, and with them the LR schedule's position.
        images_seen = step * saved_batch
        step = images_seen // global_batch
        rep.line(f"resuming with global batch {global_batch} instead of {saved_batch} "
                 f"({state.get('world_size')} -> {info.size} workers): {images_seen} images seen = step {step}; "
                 f"to keep the global batch instead, set data.batch_size or horovod.backward_passes_per_step")
    start_epoch = step // steps_per_epoch
    if info.is_main:
        (run_dir / "config.yaml").write_text(config.dump(cfg))
        (run_dir / "versions.json").write_text(json.dumps(versions(info), indent=2) + "\n")
    for note in notes:
        rep.line(note)
    peak_lr = optim.schedule.scaled_lr(cfg.optim.lr, global_batch)
    rep.line(f"hvdfast train: {cfg.model.name} on {d.backend} data ({d.train.images} train / {d.val.images} val "
             f"images, {d.num_classes} classes), {info.size} worker(s) x {cfg.data.batch_size} x {accum} = "
             f"global batch {global_batch}, {cfg.optim.name} peak lr {peak_lr:.4g}, "
             f"{prec.name}, compression {cfg.horovod.compression}, {info.controller}, op {cfg.horovod.op}"
             f"{f', gradient buckets {cfg.horovod.bucket_mb:g} MiB' if cfg.horovod.bucket_mb > 0 else ''}, "
             f"{info.cores_per_rank} core(s)/worker, {steps_per_epoch} steps/epoch, {total_steps} steps")
    if resume_path is not None:
        rep.line(f"resuming from {resume_path} (step {step}, epoch {start_epoch})")
    rep.line(f"run directory: {run_dir}")
    unset = {k: v for k, v in tune.launcher_env(tune.for_config(cfg)).items() if v not in os.environ.get(k, "")}
    if unset:
        rep.line(f"note: `hvdfast tune` chose {' '.join(f'{k}={v}' for k, v in unset.items())} at process start, "
                 f"and this run did not get it; launch with `hvdfast launch` (or export it before horovodrun).")

    best = {"top1": -1.0, "epoch": -1}
    final = {"top1": None}
    history = {"img_s": [], "time_to_target": None}
    train_time = float(state.get("train_time_s", 0.0)) if state is not None else 0.0
    skipped_before = int(state.get("skipped", 0)) if state is not None else 0
    if state is not None:
        best = dict(state.get("best", best))
    consecutive_nonfinite = [0]

    def on_log(at_step: int, window: torch.Tensor) -> None:
        # Horovod: one small allreduce per log interval carries every metric.
        m = window_metrics(dist.allreduce_sum(window, name=f"metrics.{at_step}"), info.size)
        consecutive_nonfinite[0] = consecutive_nonfinite[0] + 1 if m["nonfinite_ranks"] else 0
        history["img_s"].append(m["img_s"])
        lr = lr_fn(at_step - 1)
        rep.record("train", at_step, {"epoch": epoch, "lr": lr, **m},
                   show=None if rep.has_bar else
                   f"epoch {epoch} step {at_step}/{total_steps} loss {m['loss']:.4f} top1 {m['top1']:.1f}% "
                   f"lr {lr:.4g} {m['img_s']:.1f} img/s data-wait {m['data_wait_s']:.2f}s")
        rep.progress(at_step, f"loss {m['loss']:.3f} {m['img_s']:.0f} img/s")
        if consecutive_nonfinite[0] >= 2:
            raise TrainingError(f"loss is NaN/inf at step {at_step} on {m['nonfinite_ranks']} rank(s) for "
                                f"{consecutive_nonfinite[0]} log intervals; lower optim.lr or raise "
                                f"optim.warmup_epochs, and resume from the last checkpoint.")

    def save_checkpoint(at_step: int, epochs_done: float) -> None:
        if not info.is_main:
            return
        wd.beat("checkpoint write")
        checkpoint.save(run_dir / "checkpoints", {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scaler": prec.scaler.state_dict() if prec.scaler is not None else {},
            "step": at_step, "epoch": epochs_done, "step_in_epoch": at_step % steps_per_epoch,
            "rng": checkpoint.rng_state(), "config": config.to_dict(cfg), "model_name": cfg.model.name,
            "num_classes": d.num_classes, "best": best, "train_time_s": time.perf_counter() - t_start,
            "skipped": skipped_before + d.train.skipped, "world_size": info.size, "global_batch": global_batch,
        }, keep=cfg.train.keep_checkpoints)

    every_steps = cfg.train.checkpoint_every_steps

    def on_step(at_step: int) -> None:
        wd.beat("training step", at_step)
        # Mid-epoch checkpoints: the data order is a function of (seed, epoch), so a resumed run skips exactly
        # the batches this one consumed.
        if every_steps and at_step % every_steps == 0 and at_step % steps_per_epoch and at_step < total_steps:
            save_checkpoint(at_step, at_step / steps_per_epoch)

    epoch = start_epoch
    skip = step - start_epoch * steps_per_epoch
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    t_start = time.perf_counter() - train_time
    while step < total_steps:
        steps_now = min(steps_per_epoch - skip, total_steps - step)
        step = engine.train_epoch(
            forward, opt, wd.watch(d.train.epoch(epoch, skip=skip * accum)), steps=steps_now, first_step=step,
            lr_fn=lr_fn, criterion=criterion, prec=prec, accumulation=accum,
            loss_divisor=dist.loss_divisor(cfg.horovod), clip_grad_norm=cfg.optim.clip_grad_norm,
            log_every=cfg.train.log_every, on_log=on_log, on_step=on_step)
        skip = 0
        epoch_done = step % steps_per_epoch == 0 or step >= total_steps
        last = step >= total_steps
        if epoch_done and info.size > 1:
            dist.average_buffers(model)  # one model everywhere for validation and the checkpoint
        if epoch_done and ((epoch + 1) % cfg.train.eval_every == 0 or last):
            val_batches = wd.watch(d.val.epoch(0), phase="validation data loader", then="validation")
            ev = eval_metrics(dist.allreduce_sum(engine.evaluate(model, val_batches, prec, criterion),
                                                 name=f"eval.{step}"))
            elapsed = time.perf_counter() - t_start
            final["top1"] = ev["top1"]
            if ev["top1"] > best["top1"]:
                best = {"top1": ev["top1"], "epoch": epoch + 1}
            if cfg.train.target_top1 and history["time_to_target"] is None and ev["top1"] >= cfg.train.target_top1:
                history["time_to_target"] = elapsed
            rep.record("val", step, {"epoch": epoch + 1, **ev}, show=f"epoch {epoch + 1}/{n_epochs} validation: "
                       f"top1 {ev['top1']:.2f}% top5 {ev['top5']:.2f}% loss {ev['loss']:.4f} "
                       f"({ev['images']} images) at {elapsed:.1f}s")
        every = cfg.train.checkpoint_every
        if epoch_done and (last or (every > 0 and (epoch + 1) % every == 0)):
            save_checkpoint(step, step / steps_per_epoch)
        if epoch_done:
            epoch += 1

    wd.stop()
    total = time.perf_counter() - t_start
    ranks = consistency(model, info.size)
    skipped = int(dist.allreduce_sum([d.train.skipped], name="skipped")[0]) + skipped_before
    mean_img_s = float(np.mean(history["img_s"][1:] or history["img_s"] or [0.0]))
    summary = {"best_top1": best["top1"], "best_epoch": best["epoch"], "final_top1": final["top1"],
               "train_time_s": total,
               "time_to_target_s": history["time_to_target"], "target_top1": cfg.train.target_top1 or None,
               "mean_img_s": mean_img_s, "workers": info.size, "global_batch": global_batch,
               "skipped_images": skipped, "steps": step, "params_sha256": ranks[0]["params_sha256"],
               "ranks_agree": len({r["params_sha256"] for r in ranks}) == 1, "ranks": ranks}
    target = ""
    if cfg.train.target_top1:
        ttt = history["time_to_target"]
        target = (f" | time to {cfg.train.target_top1:g}% top-1: " +
                  (f"{ttt:.1f} s" if ttt is not None else "not reached"))
    rep.record("summary", step, summary,
               show=f"SUMMARY best top-1 {best['top1']:.2f}% (epoch {best['epoch']})"
                    + (f", final {final['top1']:.2f}%" if final["top1"] is not None else "")
                    + f" | train time {total:.1f} s"
                    f"{target} | mean {mean_img_s:.1f} img/s over {info.size} worker(s)"
                    + (f" | skipped {skipped} undecodable image(s)" if skipped else ""))
    if not summary["ranks_agree"]:
        odd = [f"rank {r['rank']} on {r['host']}" for r in ranks if r["params_sha256"] != ranks[0]["params_sha256"]]
        rep.line(f"WARNING: the ranks finished with different parameters ({', '.join(odd)} differ from rank 0): "
                 f"a rank ran a different code or library version, or a non-deterministic op; check "
                 f"`hvdfast doctor --hosts` and the run's versions.json.")
    rep.close()
    summary["model"] = model
    summary["rank"] = info.rank
    return summary
