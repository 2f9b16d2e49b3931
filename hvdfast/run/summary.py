"""What a run leaves behind: config.yaml and versions.json at the start; at the end every rank's parameter digest
(the ranks must agree), the skipped files, and one SUMMARY line with accuracy and throughput."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import platform
import time

import numpy as np
import torch

from .. import checkpoint, config, dist, engine, optim, tuned
from ..metrics import Reporter
from ..watchdog import Watchdog
from . import stop
from .fit import FitState, bad_files
from .setup import Job


def versions(info: dist.DistInfo) -> dict:
    import torchvision
    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "horovod": dist.build_info(), "host": platform.node(), "cpu_cores": torch.get_num_threads(),
           "workers": info.size, "controller": info.controller, "device": str(info.device),
           # the CPU's vector ISA and whether it computes bf16 natively: what a CPU run's speed depends on
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": engine.cpu_bf16_native()}
    out["dali"] = dali_version()
    return out


def dali_version() -> str | None:
    """DALI's version without importing it where the run did not (0.5 s on rank 0, which every rank waits for):
    the installed nvidia-dali-* distribution's (the package is named per CUDA version)."""
    import sys
    if "nvidia.dali" in sys.modules:
        return getattr(sys.modules["nvidia.dali"], "__version__", None)
    from importlib import metadata
    for d in metadata.distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("nvidia-dali"):
            return d.version
    return None


LOCK = ".lock"  # in the run folder: held by the process of rank 0 of the run that writes there


@contextlib.contextmanager
def run_folder(job: Job, agree: bool = True):
    """The run folder is this run's while the block runs: _write_run_files, and rank 0's hold on it let go at the
    end (the kernel lets go of it too, however the process ends)."""
    try:
        _write_run_files(job, agree)
        yield
    finally:
        if job.folder_lock is not None:
            os.close(job.folder_lock)
            job.folder_lock = None


@dataclasses.dataclass
class Outputs:
    """A run's Reporter (rank 0 writes, the others' are silent) and Watchdog; an elastic reset replaces both."""
    rep: Reporter
    wd: Watchdog


def train_in_folder(job: Job, st: FitState, resumed_from, body, progress: str, agree: bool = True) -> dict:
    """What every training does around its loop, in this order, for train.run and elastic.run alike: the run folder
    (its files, rank 0's lock), the Reporter and Watchdog, the first lines, the clock (a resumed run's earlier
    training time carried on), `body(outputs)` trains, the summary. Returns the summary (every rank), with the model
    and the rank."""
    info = job.plan.info
    with run_folder(job, agree):
        resume = job.cfg.train.resume
        out = Outputs(Reporter(job.run_dir, info.is_main, progress, job.plan.total_steps, resume),
                      Watchdog(job.run_dir, info.rank, info.size, job.cfg.train.hang_timeout_s, resume))
        announce(job, st, out.rep, resumed_from)
        st.t_start = time.perf_counter() - st.trained_s
        if info.is_main:
            stop.clear(job.run_dir)  # a record of an earlier early stop is not this run's
        try:
            body(out)
        except stop.Stopped:
            out.rep.close()  # done at the agreed step (run.fit.stop_early); here for a stop raised anywhere else
            raise
        finally:
            out.wd.stop()  # no hang report while the process exits
        summary = summarize(job, st, out.rep)
        out.rep.close()
        return {**summary, "model": job.model, "rank": info.rank}


def _job_key() -> str:
    """What the ranks of one elastic job share and another job's do not: the address of horovodrun's rendezvous
    server, which its elastic driver gives every worker it starts ('' outside horovodrun)."""
    return ":".join(os.environ.get(f"HOROVOD_GLOO_RENDEZVOUS_{k}", "") for k in ("ADDR", "PORT")).strip(":")


def _in_use(job: Job, holder: dict) -> str:
    who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "since") if k in holder)
    return (f"train.run_dir '{job.run_dir}' is in use by another run ({who or 'its holder unknown'}): two runs in "
            f"one folder overwrite each other's checkpoints and records. Wait for it to end, or set another "
            f"train.run_dir.")


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _hold(job: Job) -> str | None:
    """Rank 0 takes an exclusive flock on RUN_DIR/.lock for the run: a second run started in the same folder (the
    same job submitted twice, a second terminal) is refused, where both trained and overwrote each other's
    checkpoints and records. The problem, or None. A file system without flock (Lustre mounted without it) is
    said in a note and the run goes on unguarded. Tried for a second: an elastic job's other ranks look at the
    lock for a moment each (_check_holder)."""
    path = job.run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    for _ in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                job.notes.append(f"note: {path} cannot be locked here ({exc.strerror}): nothing stops a second run "
                                 f"from writing to this folder at the same time")
                return None
            time.sleep(0.05)
    else:
        holder = _read_holder(fd)
        os.close(fd)
        return _in_use(job, holder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "since": time.strftime(
        "%Y-%m-%d %H:%M:%S"), "job": _job_key()}).encode(), 0)
    job.folder_lock = fd
    return None


def take_over(job: Job) -> str | None:
    """Elastic, in the worker that a reset made rank 0: the run folder's lock, which the old rank 0's death let go
    (the kernel releases a dead process's flock), so a second run started now is still refused. None when it is
    held now by this worker or by another of this job (a surviving former rank 0); else the problem."""
    if job.folder_lock is not None or _hold(job) is None:
        return None
    return _check_holder(job)


def _check_holder(job: Job) -> str | None:
    """An elastic run's other ranks (no collective may come before Horovod's state sync, so rank 0 cannot tell
    them): the folder is in use when another process holds its lock and that holder is not this job's (its rendezvous
    server differs). Rank 0 may be between taking the lock and writing its name: asked again for two seconds."""
    path = job.run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        for _ in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # nobody holds it: free, or not yet taken
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None  # no flock here (rank 0 noted it)
            holder = _read_holder(fd)
            if holder.get("job") == _job_key():
                return None
            time.sleep(0.1)
        return _in_use(job, holder)
    finally:
        os.close(fd)


def _write_run_files(job: Job, agree: bool = True) -> None:
    """The resolved config and the software versions, next to the results (rank 0), once rank 0 holds the folder
    (_hold). A run folder rank 0 cannot write, or one another run holds, stops every rank with one line (from rank
    0), where the others would otherwise meet it as Horovod shutting down under them, a traceback each. With
    `agree` the others learn rank 0's answer (one broadcast); elastic runs (agree=False: no collective before
    Horovod's state sync, which a joiner enters first) have every rank make and check the folder itself, as they
    already assume a file system every rank shares (resume reads the checkpoint on every rank) — else rank 0's host
    would be blacklisted and the others train on without it (a folder another run holds: _check_holder)."""
    info = job.plan.info
    problem = None
    if info.is_main or not agree:
        try:
            job.run_dir.mkdir(parents=True, exist_ok=True)
            if info.is_main:
                problem = _hold(job)
                if problem is None:
                    (job.run_dir / "config.yaml").write_text(config.dump(job.cfg))
                    (job.run_dir / "versions.json").write_text(json.dumps(versions(info), indent=2) + "\n")
            elif not os.access(job.run_dir, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(job.run_dir))
            else:
                problem = _check_holder(job)
        except OSError as exc:
            problem = (f"train.run_dir '{job.run_dir}' cannot be written: {exc.strerror}. Point train.run_dir at a "
                       f"folder this user can write.")
    if agree:
        problem = dist.broadcast_object(problem, name="run_dir.written")  # Horovod: rank 0's answer, everywhere
    if problem:
        raise config.ConfigError(problem)


def announce(job: Job, st: FitState, rep: Reporter, resumed_from) -> None:
    """The run's first lines: what trains on what, with which knobs, and anything the user should know."""
    cfg, p = job.cfg, job.plan
    info = p.info
    for note in job.notes:
        rep.line(note)
    peak_lr = optim.schedule.peak_lr(cfg.optim, p.global_batch)
    h, buckets = cfg.horovod, ""
    if h.bucket_mb > 0:
        buckets = f", gradient buckets {h.bucket_mb:g} MiB" + (f" (the last {h.last_bucket_mb:g})"
                                                               if h.last_bucket_mb > 0 else "")
    rep.line(f"hvdfast train: {cfg.model.name} on {p.data.backend} data ({p.data.train.images} train / "
             f"{p.data.val.images} val images, {p.data.num_classes} classes), {info.size} worker(s) x "
             f"{cfg.data.batch_size} x {p.accum} = global batch {p.global_batch}, {cfg.optim.name} peak lr "
             f"{peak_lr:.4g}, {job.prec.name}, compression {cfg.horovod.compression}, {info.controller}, "
             f"op {cfg.horovod.op}"
             f"{buckets}, "
             f"{info.cores_per_rank} core(s)/worker, {p.steps_per_epoch} steps/epoch, {p.total_steps} steps"
             + (", elastic" if cfg.train.elastic else ""))
    if resumed_from is not None:
        rep.line(f"resuming from {resumed_from} (step {st.step}, epoch {st.step // p.steps_per_epoch})")
    rep.line(f"run directory: {job.run_dir}")
    unset = {k: v for k, v in tuned.launcher_env(tuned.for_config(cfg)).items() if v not in os.environ.get(k, "")}
    if unset:
        rep.line(f"note: `hvdfast tune` chose {' '.join(f'{k}={v}' for k, v in unset.items())} at process start, "
                 f"and this run did not get it; launch with `hvdfast launch` (or export it before horovodrun).")


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


def summarize(job: Job, st: FitState, rep: Reporter) -> dict:
    """Collectives first (every rank), then rank 0 reports. Returns the summary (every rank)."""
    cfg, info = job.cfg, job.plan.info
    total = st.elapsed()
    ranks = consistency(job.model, info.size)
    skipped = len(bad_files(job, st))
    mean_img_s = float(np.mean(st.img_s[1:] or st.img_s or [0.0]))
    summary = {"best_top1": st.best_top1, "best_epoch": st.best_epoch, "final_top1": st.final_top1,
               "train_time_s": total, "time_to_target_s": st.time_to_target,
               "target_top1": cfg.train.target_top1 or None, "mean_img_s": mean_img_s, "workers": info.size,
               "global_batch": job.plan.global_batch, "skipped_images": skipped, "steps": st.step,
               "params_sha256": ranks[0]["params_sha256"],
               "ranks_agree": len({r["params_sha256"] for r in ranks}) == 1, "ranks": ranks}
    target = ""
    if cfg.train.target_top1:
        ttt = st.time_to_target
        target = (f" | time to {cfg.train.target_top1:g}% top-1: " +
                  (f"{ttt:.1f} s" if ttt is not None else "not reached"))
    best = job.run_dir / checkpoint.BEST
    if cfg.train.keep_best and best.is_file():
        rep.line(f"best weights: {best} (top-1 {st.best_top1:.2f}%, epoch {st.best_epoch}; with the class names: "
                 f"README, 'Using the trained model')")
    rep.record("summary", st.step, summary,
               show=f"SUMMARY best top-1 {st.best_top1:.2f}% (epoch {st.best_epoch})"
                    + (f", final {st.final_top1:.2f}%" if st.final_top1 is not None else "")
                    + f" | train time {total:.1f} s"
                    f"{target} | mean {mean_img_s:.1f} img/s over {info.size} worker(s)"
                    + (f" | skipped {skipped} undecodable image(s)" if skipped else ""))
    if not summary["ranks_agree"]:
        odd = [f"rank {r['rank']} on {r['host']}" for r in ranks if r["params_sha256"] != ranks[0]["params_sha256"]]
        rep.line(f"WARNING: the ranks finished with different parameters ({', '.join(odd)} differ from rank 0): "
                 f"a rank ran a different code or library version, or a non-deterministic op; check "
                 f"`hvdfast doctor --hosts` and the run's versions.json.")
    return summary
