"""Resume: find the run's checkpoint (rank 0 reads it, every rank gets it), check that it belongs to this run, and
load it into the job. A checkpoint of a different run (other data, model, optimizer or seed) is refused, and so is
a run with nothing left to train: resume never silently continues something else, and never says "done" for
work it did not do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import checkpoint, config, dist
from ..checkpoint import CheckpointError
from .fit import FitState
from .setup import Job

# Settings that make a run a different run: a checkpoint written under other values is not this run's.
IDENTITY = ("data.dir", "data.synthetic_classes", "model.name", "optim.name", "train.seed")


def find(job: Job, broadcast: bool = True) -> tuple[Optional[Path], Optional[dict]]:
    """(path, state) of the checkpoint to resume from, or (None, None) to start fresh. broadcast=False (elastic):
    every rank reads it itself, with no collective (a joining worker calls this while the others train; what it
    reads is then replaced by Horovod's state sync from rank 0)."""
    info = job.plan.info
    path, state, notes = (checkpoint.find_resume(job.run_dir, job.cfg.train.resume) if info.is_main or not broadcast
                          else (None, None, []))
    job.notes.extend(notes)
    if info.size > 1 and broadcast:
        # Horovod: rank 0 alone reads the checkpoint (no shared file system assumed) and sends it to all.
        path, state = dist.broadcast_object((path, state), name="resume.state")
    return path, state


def check(job: Job, path: Path, state: dict) -> None:
    cfg = job.cfg
    checkpoint.check_compatible(state, path, cfg.model.name, job.plan.data.num_classes)
    saved = {f"{s}.{k}": v for s, sec in (state.get("config") or {}).items() for k, v in sec.items()}
    mine = config.to_flat(cfg)
    differ = [f"{k} {saved[k]!r} -> {mine[k]!r}" for k in IDENTITY if k in saved and saved[k] != mine[k]]
    if differ:
        raise CheckpointError(f"'{path}' is a checkpoint of a different run ({'; '.join(differ)}). Use a new "
                              f"train.run_dir for this one, or train.resume=never to start over in "
                              f"{job.run_dir}.")


def start_step(job: Job, path: Path, state: dict, log) -> int:
    """The optimizer step to continue from, in this run's global batch (the images seen are kept, and with them
    the LR schedule's position, when the world size or the batch changed)."""
    p = job.plan
    step = int(state["step"])
    saved_batch = int(state.get("global_batch", p.global_batch))
    if saved_batch != p.global_batch:
        images_seen = step * saved_batch
        step = images_seen // p.global_batch
        log(f"resuming with global batch {p.global_batch} instead of {saved_batch} "
            f"({state.get('world_size')} -> {p.info.size} workers): {images_seen} images seen = step {step}; "
            f"to keep the global batch instead, set data.batch_size or horovod.backward_passes_per_step")
    if step >= p.total_steps:
        raise CheckpointError(
            f"nothing left to train: '{path}' is at step {step} and this run has {p.total_steps} steps "
            f"(train.epochs={job.cfg.train.epochs:g}). Raise train.epochs to train on, or use a new train.run_dir "
            f"(or train.resume=never) to start over.")
    return step


def restore(job: Job, path: Path, state: dict, collective: bool = True) -> None:
    """Weights, optimizer, loss-scaler and gradient-compressor state (every rank holds the same checkpoint).
    collective=False (elastic, before Horovod's state sync): no collective; PowerSGD takes Q only (each rank's
    error restarts when the elastic world forms: dist.rejoin)."""
    job.model.load_state_dict(state["model"])
    # After wrapping: Horovod's DistributedOptimizer is a new instance with empty state.
    job.opt.load_state_dict(state["optimizer"])
    if job.prec.scaler is not None and state.get("scaler"):
        job.prec.scaler.load_state_dict(state["scaler"])
    if getattr(job.opt, "keeps_compressor_state", False):
        if collective:
            restore_compressor(job, path, state)
        else:
            job.opt.load_compressor_state(state.get("compressor_q"), None)


def restore_compressor(job: Job, path: Path, state: dict) -> None:
    """PowerSGD: Q from the checkpoint, and each rank's error from its own file beside it, when the run has the same
    workers and buckets; what cannot be restored starts fresh (a seeded Q, a zero error), and rank 0 says so."""
    info = job.plan.info
    mine = checkpoint.load_rank_state(path, info.rank) if state.get("world_size") == info.size else None
    done = job.opt.load_compressor_state(state.get("compressor_q"), mine and mine.get("error"))
    restored = dist.allreduce_sum(["q" in done, "error" in done], name="resume.compressor") if info.size > 1 \
        else [float("q" in done), float("error" in done)]
    q_ok, errors = int(restored[0]), int(restored[1])
    if q_ok < info.size or errors < info.size:
        job.notes.append(f"gradient compression state: Q {'restored' if q_ok == info.size else 'restarted'}, "
                         f"error feedback restored on {errors} of {info.size} rank(s) (the others start it at "
                         f"zero: a different worker count or bucket layout, or no file from this rank beside "
                         f"{path.name})")


def resume(job: Job, broadcast: bool = True) -> tuple[FitState, Optional[Path]]:
    """The run's FitState: from this run's newest checkpoint (checked, loaded into the job), or a fresh one.
    Returns it with the checkpoint's path (None when starting fresh). broadcast: see find()."""
    path, state = find(job, broadcast)
    if state is None:
        return FitState(), None
    check(job, path, state)
    st = FitState.from_checkpoint(state, start_step(job, path, state, job.notes.append))
    restore(job, path, state, collective=broadcast)
    return st, path
