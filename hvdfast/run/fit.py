"""Fit: epochs of engine.train_epoch, with metrics at log intervals, validation and checkpoints at epoch ends (and
every train.checkpoint_every_steps). Everything the loop changes lives in FitState, so elastic training can
re-enter the loop after a reset and a checkpoint is a plain copy of it.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import checkpoint, config, dist, engine
from ..metrics import Reporter, eval_metrics, window_metrics
from ..watchdog import Watchdog
from . import stop
from .setup import Job


class TrainingError(RuntimeError):
    """A run that must stop (e.g. loss diverged); the message says what to try."""


class OutOfMemory(TrainingError):
    """A rank's allocation failed. Each rank it happened to says so in one line: where workers share a host's
    memory (or GPUs differ) rank 0 may not be one of them, and its own line would only say a worker left."""
    rank_local = True


def _failed_allocation(exc: BaseException) -> Optional[tuple[str, str]]:
    """(which memory, what was asked for) when `exc` is an allocation that failed: torch's CUDA allocator
    (OutOfMemoryError, 'Tried to allocate 2.00 GiB'), its CPU allocator ('you tried to allocate N bytes'), DALI's
    (dali/core/cuda_error.h's CUDABadAlloc: 'CUDA allocation failed', 'Can't allocate N bytes on device D.' or
    '... on host.', as a pipeline's RuntimeError or pybind11's MemoryError) or Python's MemoryError; None for
    anything else."""
    text = str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in text:
        asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", text)
        return "GPU", asked.group(1) if asked else ""
    asked = re.search(r"(?:you tried to allocate|Can't allocate) (\d+) bytes( on device)?", text)
    if asked:
        return "GPU" if asked.group(2) else "CPU", f"{int(asked.group(1)) / 2**30:.2f} GiB"
    if "CUDA allocation failed" in text:
        return "GPU", ""
    if isinstance(exc, MemoryError):
        return "CPU", ""
    return None


def _workers_here() -> int:
    """The workers on this host as the launcher says (before Horovod starts, too); 1 where it does not say."""
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "HOROVOD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS",
                "SLURM_NTASKS_PER_NODE"):
        with contextlib.suppress(KeyError, ValueError):
            return int(os.environ[var])
    return 1


def memory_knobs(cfg: config.Config) -> tuple[str, str]:
    """(what the run asked for, what to lower) in a training run's out-of-memory line."""
    return (f"data.batch_size={cfg.data.batch_size} per worker, data.image_size={cfg.data.image_size}, "
            f"model.name={cfg.model.name}, train.precision={cfg.train.precision}",
            "data.batch_size (divided by K, with horovod.backward_passes_per_step=K, the global batch stays) or "
            "data.image_size")


@contextlib.contextmanager
def out_of_memory_in_one_line(at: str, lower: str):
    """Around a run (setup, where the data and model are placed, and training; a benchmark's worker): a failed
    allocation (a batch too large for the device) becomes OutOfMemory, one line that says what was asked for (`at`)
    and what to lower, instead of a traceback from every rank."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        failed = _failed_allocation(exc)
        if failed is None:
            raise
        memory, asked = failed
        here = _workers_here()
        raise OutOfMemory(
            f"out of {memory} memory" + (f" (asked for {asked})" if asked else "") + f" at {at}: lower {lower}"
            + (f"; this host's {here} workers share its memory" if memory == "CPU" and here > 1 else "")
            + ".") from None


@dataclass
class FitState:
    step: int = 0                       # optimizer steps done, in this run's global batch
    best_top1: float = -1.0             # best validation top-1 (percent) so far
    best_epoch: int = -1
    final_top1: Optional[float] = None  # the last validation's top-1
    img_s: list = field(default_factory=list)  # every log window's throughput (all workers)
    time_to_target: Optional[float] = None     # s of training until validation reached train.target_top1
    trained_s: float = 0.0              # training time of earlier processes (a resumed run)
    bad_files: set = field(default_factory=set)  # undecodable files skipped (data.skip_corrupt), all ranks
    nonfinite_logs: int = 0             # consecutive log windows with a NaN/inf loss
    t_start: float = 0.0                # perf_counter() when this process started training, less trained_s
    stop_reason: Optional[str] = None   # what all ranks agreed to stop for (a signal, train.max_time)
    saved_step: int = -1                # the step of the last checkpoint written
    best_weights: Optional[tuple] = None  # rank 0: (step, CPU copy of the model) of a best validation that no
                                          # checkpoint was written at yet; best.pt gets it with the next one

    @classmethod
    def from_checkpoint(cls, state: dict, step: int) -> "FitState":
        best = state.get("best") or {}
        return cls(step=step, best_top1=best.get("top1", -1.0), best_epoch=best.get("epoch", -1),
                   trained_s=float(state.get("train_time_s", 0.0)), bad_files=set(state.get("bad_files", ())),
                   time_to_target=state.get("time_to_target_s"))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start


def bad_files(job: Job, st: FitState) -> set:
    """Every rank's skipped files, united (a collective: every rank calls it at the same point; none without
    data.skip_corrupt, where there is nothing to gather)."""
    if not job.cfg.data.skip_corrupt:
        return st.bad_files
    mine = sorted(job.plan.data.train.bad_files | job.plan.data.val.bad_files)
    found = dist.allgather_object(mine, name="bad_files") if job.plan.info.size > 1 else [mine]
    return st.bad_files.union(*map(set, found))


def _epoch_of(job: Job, step: int) -> int:
    """The epoch a checkpoint of `step` is named by (the one it is in)."""
    return int(step / job.plan.steps_per_epoch)


def checkpoint_path(job: Job, step: int) -> Path:
    """Rank 0's checkpoint of `step` (what save_checkpoint writes there)."""
    return job.run_dir / "checkpoints" / checkpoint.name_for(_epoch_of(job, step), step)


def keep_best_weights(job: Job, st: FitState) -> None:
    """Rank 0, after a validation that beat the best at a step no checkpoint is written at: a CPU copy of the model
    (what best.pt gets with the next checkpoint, not a file write per validation)."""
    if job.cfg.train.keep_best and job.plan.info.is_main:
        st.best_weights = (st.step, {k: v.detach().to("cpu", copy=True) for k, v in job.model.state_dict().items()})


def _best_file(job: Job, st: FitState, best_now: bool) -> Optional[memoryview]:
    """Rank 0: best.pt's bytes for this checkpoint (the model as it is, where a validation at this step beat the
    best; else the copy keep_best_weights made), or None when the best has not changed since the last one."""
    if not job.cfg.train.keep_best:
        return None
    step, weights = (st.step, job.model.state_dict()) if best_now else (st.best_weights or (None, None))
    st.best_weights = None
    if weights is None:
        return None
    return checkpoint.encode({
        "kind": "best weights", "model": weights, "model_name": job.cfg.model.name,
        "num_classes": job.plan.data.num_classes, "classes": list(job.plan.data.classes),
        "top1": st.best_top1, "epoch": st.best_epoch, "step": step, "config": config.to_dict(job.cfg)})


def save_checkpoint(job: Job, st: FitState, wd: Watchdog, buffers_averaged: bool, best_now: bool = False) -> None:
    """Called on every rank at the same step: BN statistics are averaged first unless they just were (a checkpoint
    holds one model, not rank 0's shard statistics; running statistics are linear in the batches, so averaging
    mid-epoch does not change the epoch-end average), and the skipped files are gathered; rank 0's checkpoint (and
    each rank's own part, PowerSGD's error) is encoded here and written in the background (job.writer), with
    best.pt where the best validation changed since the last checkpoint (best_now: at this step)."""
    p = job.plan
    if p.info.size > 1 and not buffers_averaged:
        dist.average_buffers(job.model)
    skipped = bad_files(job, st)
    st.saved_step = st.step
    # PowerSGD's state: Q is the same on every rank (rank 0's checkpoint holds it); each rank's error feedback is
    # its own, so each rank writes it beside the checkpoint (one model's worth per rank: no gather to rank 0)
    comp = job.opt.compressor_state() if getattr(job.opt, "keeps_compressor_state", False) else None
    keep = job.cfg.train.keep_checkpoints
    directory, epoch, step = job.run_dir / "checkpoints", _epoch_of(job, st.step), st.step
    writes = []
    if comp is not None and any(e is not None for e in comp["error"]):
        mine = checkpoint.encode({"error": comp["error"], "world_size": p.info.size})
        writes.append(lambda: checkpoint.store_rank_state(directory, epoch, step, p.info.rank, mine, keep))
    if p.info.is_main:
        state = checkpoint.encode({
            "model": job.model.state_dict(), "optimizer": job.opt.state_dict(),
            "scaler": job.prec.scaler.state_dict() if job.prec.scaler is not None else {},
            "step": st.step, "epoch": st.step / p.steps_per_epoch, "step_in_epoch": st.step % p.steps_per_epoch,
            "rng": checkpoint.rng_state(), "config": config.to_dict(job.cfg), "model_name": job.cfg.model.name,
            "num_classes": p.data.num_classes, "best": {"top1": st.best_top1, "epoch": st.best_epoch},
            "train_time_s": st.elapsed(), "time_to_target_s": st.time_to_target, "bad_files": sorted(skipped),
            "world_size": p.info.size, "global_batch": p.global_batch,
            "compressor_q": comp["q"] if comp is not None else None, "classes": list(p.data.classes),
        })
        best = _best_file(job, st, best_now)
        if best is not None:  # first: best.pt is never older than the best the checkpoint records
            writes.append(lambda: checkpoint.store_best(job.run_dir, best))
        writes.append(lambda: checkpoint.store(directory, epoch, step, state, keep))
    if writes:
        # the state is encoded now; the files are written while the next steps train (waited for before a stop
        # and at the end of the run)
        wd.beat("checkpoint write")  # a write that hangs is the one before this (submit waits for it)
        job.writer.submit(lambda: [write() for write in writes])


def validate(job: Job, st: FitState, rep: Reporter, wd: Watchdog, epoch: int, n_epochs: int) -> bool:
    """Every rank: score the model on the validation split; True where it beat the best so far."""
    cfg = job.cfg
    val_batches = wd.watch(job.plan.data.val.epoch(0), phase="validation data loader", then="validation")
    ev = eval_metrics(dist.allreduce_sum(engine.evaluate(job.model, val_batches, job.prec, job.criterion),
                                         name=f"eval.{st.step}"))
    elapsed = st.elapsed()
    st.final_top1 = ev["top1"]
    improved = ev["top1"] > st.best_top1
    if improved:
        st.best_top1, st.best_epoch = ev["top1"], epoch + 1
    if cfg.train.target_top1 and st.time_to_target is None and ev["top1"] >= cfg.train.target_top1:
        st.time_to_target = elapsed
    rep.record("val", st.step, {"epoch": epoch + 1, **ev}, show=f"epoch {epoch + 1}/{n_epochs} validation: "
               f"top1 {ev['top1']:.2f}% top5 {ev['top5']:.2f}% loss {ev['loss']:.4f} "
               f"({ev['images']} images) at {elapsed:.1f}s")
    return improved


def stop_early(job: Job, st: FitState, rep: Reporter, wd: Watchdog, buffers_averaged: bool) -> None:
    """Every rank, at the agreed step: checkpoint there (unless one was just written), leave the stop record and
    raise stop.Stopped (the CLI exits with stop.EXIT_STOPPED)."""
    p = job.plan
    steps = dist.allgather_object(st.step, name="stop.steps") if p.info.size > 1 else [st.step]
    if st.saved_step != st.step:
        save_checkpoint(job, st, wd, buffers_averaged)
    job.writer.wait()  # the files on disk before anyone says so or exits
    epoch, in_epoch = divmod(st.step, p.steps_per_epoch)
    where = f"step {st.step}/{p.total_steps} (epoch {epoch}, step {in_epoch} of {p.steps_per_epoch})"
    msg = f"stopped on {st.stop_reason} at {where}"
    if p.info.is_main:
        saved = checkpoint_path(job, st.step)
        again = ("Run the same command again to continue from it (train.resume=auto)."
                 if job.cfg.train.resume == "auto" else
                 f"Run the command again with train.resume=auto to continue from it (with "
                 f"train.resume={job.cfg.train.resume} it would not).")
        msg += f": checkpoint {saved} written; exit code {stop.EXIT_STOPPED}. {again}"
        stop.record(job.run_dir, step=st.step, total_steps=p.total_steps, reason=st.stop_reason,
                    checkpoint=str(saved), rank_steps=steps)
        rep.record("stop", st.step, {"epoch": st.step / p.steps_per_epoch, "reason": st.stop_reason,
                                     "checkpoint": str(saved)}, show=msg)
    # Rank 0's metrics and TensorBoard flushed before the barrier, not after: horovodrun and mpirun end the whole
    # job at the first non-zero exit, so what is left after it must be the same on every rank (a rank 1 that
    # exited while rank 0 still closed its writers got rank 0 terminated, exit 143 instead of 75).
    rep.close()
    if p.info.size > 1:
        # Nobody exits before rank 0 has written everything.
        dist.barrier()
    raise stop.Stopped(msg, shown=p.info.is_main, agreed=True)


def check_loss_scale(m: dict, at_step: int) -> None:
    """fp16: a loss scale below 1 means the gradients overflow fp16 even unscaled, so the loss scaler skips every
    step and the weights no longer change: without this, the scale halves on toward 0 (2^-84 after 100 steps of a
    test's overflowing model) and the run ends "done" having learnt nothing, or later meets a NaN. DeepSpeed stops
    at its min_loss_scale of 1 the same way. A NaN/inf loss is left to its own check, which says more. `m`: a
    train record (metrics.window_metrics)."""
    scale = m.get("loss_scale")
    if scale is None or scale >= 1 or m["nonfinite_ranks"]:
        return
    raise TrainingError(f"the fp16 loss scale fell to {scale:g} by step {at_step} ({m['skipped_steps']} step(s) "
                        f"skipped in the last log interval): the gradients overflow fp16 even unscaled, so no step "
                        f"changes the weights; use train.precision=bf16 or fp32 (or lower optim.lr), and resume "
                        f"from the last checkpoint.")


def fit(job: Job, st: FitState, rep: Reporter, wd: Watchdog,
        after_step: Callable[[int], None] = lambda step: None, vote: Optional[stop.StopVote] = None) -> None:
    """Train from st.step to the plan's last step. `after_step(step)` runs after every optimizer step (elastic
    training commits its state there); `vote` (every rank's StopVote) ends the run early at an agreed step with
    a checkpoint (stop.Stopped)."""
    cfg, p = job.cfg, job.plan
    every_steps = cfg.train.checkpoint_every_steps
    n_epochs = math.ceil(p.total_steps / p.steps_per_epoch)

    def on_log(at_step: int, window: engine.Window) -> None:
        # Horovod: one small allreduce per log interval carries every metric.
        m = window_metrics(engine.Window.from_tensor(dist.allreduce_sum(window.to_tensor(),
                                                                        name=f"metrics.{at_step}")), p.info.size)
        st.nonfinite_logs = st.nonfinite_logs + 1 if m["nonfinite_ranks"] else 0
        st.img_s.append(m["img_s"])
        lr = p.lr_fn(at_step - 1)
        epoch = (at_step - 1) // p.steps_per_epoch
        rep.record("train", at_step, {"epoch": epoch, "lr": lr, **m},
                   show=None if rep.has_bar else
                   f"epoch {epoch} step {at_step}/{p.total_steps} loss {m['loss']:.4f} top1 {m['top1']:.1f}% "
                   f"lr {lr:.4g} {m['img_s']:.1f} img/s data-wait {m['data_wait_s']:.2f}s"
                   + (f" loss-scale {m['loss_scale']:g} skipped {m['skipped_steps']}" if "loss_scale" in m else ""))
        rep.progress(at_step, f"loss {m['loss']:.3f} {m['img_s']:.0f} img/s")
        if st.nonfinite_logs >= 2:
            raise TrainingError(f"loss is NaN/inf at step {at_step} on {m['nonfinite_ranks']} rank(s) for "
                                f"{st.nonfinite_logs} log intervals; lower optim.lr or raise "
                                f"optim.warmup_epochs, and resume from the last checkpoint.")
        check_loss_scale(m, at_step)

    def on_step(at_step: int) -> None:
        st.step = at_step
        wd.beat("training step", at_step)
        job.writer.check()  # a checkpoint write that failed stops the run here, not at the next checkpoint
        if vote is not None:
            vote.write_s = job.writer.longest_s  # what a stop waits for besides its own checkpoint's encoding
        # Mid-epoch checkpoints: the data order is a function of (seed, epoch), so a resumed run skips exactly
        # the batches this one consumed.
        if every_steps and at_step % every_steps == 0 and at_step % p.steps_per_epoch and at_step < p.total_steps:
            save_checkpoint(job, st, wd, buffers_averaged=False)
        after_step(at_step)
        collect(at_step)  # the same step on every rank
        if vote is not None and at_step < p.total_steps:
            st.stop_reason = vote.vote(at_step)  # the same answer on every rank at this step
            return st.stop_reason is not None
        return False

    if vote is not None:
        vote.phase = "training"
    # Python's garbage collector on the step schedule, not at a moment of its own choosing on each rank; the last
    # checkpoint on disk before the run reports its end
    with engine.scheduled_gc(cfg.train.gc_every) as collect, job.writer.finishing():
        while st.step < p.total_steps:
            epoch, skip = divmod(st.step, p.steps_per_epoch)
            steps_now = min(p.steps_per_epoch - skip, p.total_steps - st.step)
            before = st.step
            st.step = engine.train_epoch(
                job.forward, job.opt, wd.watch(p.data.train.epoch(epoch, skip=skip * p.accum)), steps=steps_now,
                first_step=st.step, lr_fn=p.lr_fn, criterion=job.criterion, prec=job.prec, accumulation=p.accum,
                loss_divisor=dist.loss_divisor(cfg.horovod),  # the current world size after an elastic reset
                clip_grad_norm=cfg.optim.clip_grad_norm, log_every=cfg.train.log_every, on_log=on_log,
                on_step=on_step)
            if st.step == before:
                raise TrainingError(f"epoch {epoch}'s training data ended before its first step; every rank must yield "
                                    f"{p.steps_per_epoch * p.accum} batches per epoch (a data backend bug: please "
                                    f"report it).")
            last = st.step >= p.total_steps
            epoch_end = st.step % p.steps_per_epoch == 0 or last
            if epoch_end:
                t0 = time.perf_counter()
                if p.info.size > 1:
                    dist.average_buffers(job.model)  # one model everywhere for validation and the checkpoint
                due = (epoch + 1) % cfg.train.eval_every == 0 or last
                improved = due and validate(job, st, rep, wd, epoch, n_epochs)
                every = cfg.train.checkpoint_every
                if last or (every > 0 and (epoch + 1) % every == 0):
                    save_checkpoint(job, st, wd, buffers_averaged=True, best_now=improved)
                elif improved:
                    keep_best_weights(job, st)  # best.pt gets them with the next checkpoint
                if vote is not None:
                    vote.epoch_end_took(time.perf_counter() - t0)
            if st.stop_reason and not last:
                stop_early(job, st, rep, wd, buffers_averaged=epoch_end)
            # not at an epoch end: an elastic reset or a short epoch; go on where it stopped
    if vote is not None:
        vote.drain()
        vote.phase = "done"
