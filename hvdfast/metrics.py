"""Rank-0 reporting: metrics.jsonl, TensorBoard events, a progress bar on a TTY or plain lines in batch logs."""
from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from .engine import Window


def window_metrics(w: Window, size: int) -> dict:
    """Cross-rank sums of a log window -> averaged metrics (img/s is for all workers together). With an fp16 loss
    scaler, its scale and the steps it skipped in the window (the same on every rank: each decides on the same
    averaged gradients)."""
    images = max(w.images, 1.0)
    wall = w.wall_s / size
    m = {
        "loss": w.loss_sum / images,
        "top1": 100.0 * w.correct / images,
        "img_s": w.images / wall if wall > 0 else 0.0,
        "data_wait_s": w.data_wait_s / size,
        "step_s": w.step_s / size,
        "nonfinite_ranks": int(w.nonfinite),
    }
    if w.loss_scale > 0:
        m.update(loss_scale=w.loss_scale / size, skipped_steps=round(w.skipped / size))
    return m


def eval_metrics(reduced: torch.Tensor) -> dict:
    loss_sum, top1, top5, n = reduced.tolist()
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": int(n)}


class ReportError(RuntimeError):
    """The run's records cannot be written (a full or lost file system): one line, from rank 0."""


def _quiet_tensorboard_thread() -> None:
    """TensorBoard's writer thread re-raises a failed write (a full disk), which threading prints as a traceback;
    the writer keeps the error for its next call, where Reporter turns it into one line. Other threads' errors go
    to the hook that was there before."""
    previous = threading.excepthook
    if getattr(previous, "hvdfast_quiet", False):
        return

    def hook(args) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError):
            return
        previous(args)

    hook.hvdfast_quiet = True
    threading.excepthook = hook


class Reporter:
    """Does nothing on ranks other than 0, so callers need no `if rank == 0`.

    Every record carries `images_seen` (all workers), the run's position: optimizer steps are renumbered when a
    run resumes or an elastic reset goes on at another world size (run.resume), images seen are not, so
    TensorBoard's step axis counts them too (and runs of different global batch line up). `start()` marks where
    this process, or an elastic reset, continues the run: what an earlier attempt logged beyond that point (after
    the checkpoint a crashed run resumes from, or the commit an elastic reset rolls back to) is superseded, and
    TensorBoard hides it (purge_step) as hvdfast plot drops it."""

    def __init__(self, run_dir: Path, enabled: bool, progress: str = "auto", total_steps: int = 0,
                 resume: str = "auto"):
        self.enabled = enabled
        self.resume = resume  # train.resume: what a rerun does, for the line that ends a run (checkpoint.rerun_note)
        self.t0 = time.perf_counter()
        self.images_per_step = 0  # the global batch, from start()
        self._bar = None
        self._tb = None
        self._tb_failed = False
        self._file = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._path = run_dir / "metrics.jsonl"
        self._tb_dir = run_dir / "tensorboard"
        self._file = open(self._path, "a", buffering=1)
        _quiet_tensorboard_thread()
        use_bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
        if use_bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)

    def start(self, step: int, global_batch: int, workers: int, source: str) -> None:
        """Training goes on from `step` at `global_batch` (source: 'fresh', the checkpoint's path, 'elastic
        reset'): a `start` record, and TensorBoard's writer (re)opened to purge what was logged beyond it."""
        self.images_per_step = global_batch
        if not self.enabled:
            return
        seen = step * global_batch
        if self._tb is not None:
            self._close_tb()
        if not self._tb_failed:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # events of an earlier attempt at images_seen > seen are hidden (the ones at `seen` are this
                # run's history: nothing is logged there again)
                self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=seen + 1)
            except Exception as exc:  # tensorboard missing, or its folder cannot be written
                self._tb_off(exc)
        self.record("start", step, {"global_batch": global_batch, "workers": workers, "from": source})

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            # one write per line: launchers (horovodrun, mpirun) tag output per chunk read, and print() with
            # PYTHONUNBUFFERED writes the text and its newline separately (tags glued mid-line)
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def record(self, kind: str, step: int, values: dict, show: Optional[str] = None) -> None:
        if not self.enabled:
            return
        seen = step * self.images_per_step
        rec = {"kind": kind, "step": step, "images_seen": seen, "time_s": round(self.elapsed(), 3)}
        rec.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()})
        if self._file is not None:  # None once it could not be written (the run is ending)
            try:
                self._file.write(json.dumps(rec) + "\n")
            except OSError as exc:
                self._lost(exc)
        if self._tb is not None and kind != "start":
            try:
                for k, v in values.items():
                    if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                        self._tb.add_scalar(f"{kind}/{k}", v, seen)
            except OSError as exc:  # TensorBoard is a view of metrics.jsonl: training goes on without it
                self._tb_off(exc)
                self._close_tb()
        if show:
            self.line(show)

    def _close_tb(self) -> None:
        tb, self._tb = self._tb, None
        try:
            tb.close()
        except OSError as exc:
            if not self._tb_failed:  # said once
                self._tb_off(exc)

    def _tb_off(self, exc: Exception) -> None:
        self._tb_failed = True
        self.line(f"TensorBoard events off from here ({getattr(exc, 'strerror', None) or exc}); metrics.jsonl keeps "
                  f"every record (hvdfast plot draws it)")

    def _lost(self, exc: OSError) -> None:
        """metrics.jsonl cannot be written: the run stops with one line (training on would leave no record of
        itself), and closing the file later does not fail again on what it still holds."""
        file, self._file = self._file, None
        with contextlib.suppress(OSError):
            file.close()
        from .checkpoint import rerun_note
        raise ReportError(f"cannot write {self._path} ({exc.strerror or exc}). Free space in {self._path.parent} "
                          f"(or set train.run_dir elsewhere) and run the same command again: "
                          f"{rerun_note(self._path.parent, self.resume)}.") from None

    def progress(self, step: int, postfix: str = "") -> None:
        if self.enabled and self._bar is not None:
            self._bar.n = step
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._close_tb()
        if self._file is not None:
            self._file.close()
