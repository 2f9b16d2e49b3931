"""Stopping early without losing work: a scheduler's warning signal (SLURM's --signal=B:USR1@120, PBS's or
Kubernetes' SIGTERM before SIGKILL) or the run's own wall-time budget (train.max_time).

A signal reaches one rank, some or all; the ranks must still stop at the same step, or one would wait forever in
a collective the others never join. So every rank votes after every optimizer step: its wish (signal seen,
budget nearly spent) goes into a tiny asynchronous Horovod allreduce that runs under the next step's compute and
is read after that step. Every rank reads the same sum at the same step, so they stop together one step after the
first wish, with no extra synchronisation point in the step (Horovod negotiates the vote with the gradients).

fit then writes a checkpoint at that step (atomic, as always), rank 0 leaves `stopped.json` in the run directory
(what a launcher reads when its own exit code cannot carry ours: horovodrun turns every failure into 1), and the
process exits with EXIT_STOPPED. Running the same command again resumes from that checkpoint (train.resume=auto).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn, Optional

import torch

from .. import config, dist

EXIT_STOPPED = 75           # sysexits.h EX_TEMPFAIL: stopped early with a checkpoint; run it again to continue
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
RECORD = "stopped.json"     # in the run directory, written by rank 0 when a run stops early
_REASONS = ("SIGUSR1", "SIGTERM", "train.max_time", "SIGINT")


class Stopped(Exception):
    """Raised on every rank once the agreed stop step's checkpoint is written (`agreed`: every rank raised it at
    the same step) or by a signal before training began (nothing new to save); the CLI exits EXIT_STOPPED,
    printing the message unless rank 0 already did."""

    def __init__(self, message: str, shown: bool = False, agreed: bool = False):
        super().__init__(message)
        self.shown = shown
        self.agreed = agreed


def exit_together() -> NoReturn:
    """End an agreed stop's process now, with EXIT_STOPPED, as every other rank does, without Python's teardown.

    horovodrun and mpirun end the job at the first non-zero exit, terminating the ranks still running. All is saved
    by now (checkpoint, stopped.json, metrics), yet a normal exit then tears down torch, DALI's pipelines and their
    native threads, which takes a different time on each rank, and its last part runs after Python has restored
    SIGTERM's default action: a rank still in it when another had exited was terminated (exit 143, not 75; seen in
    CI with DALI). So: Horovod's shutdown, which ends every rank's background loop together (and finalizes MPI under
    mpirun), then flush and leave. Until then this rank's StopVote still holds SIGTERM (a repeat changes nothing)."""
    dist.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STOPPED)


class StopVote:
    """One rank's side of the stop agreement; `vote(step)` after every optimizer step returns the agreed reason
    (the same on every rank, at the same step) or None."""

    def __init__(self, max_time: str, process_start: float, size: int = 1):
        self.size = size                        # the world size (set once Horovod started; elastic: per reset)
        self.budget_s = config.parse_duration(max_time)
        self.process_start = process_start      # time.time() when this process started (the budget counts from it)
        self.signals: list[str] = []            # signals this rank received, in order
        self.pending = None                     # (tensor, Horovod handle) of the vote in flight
        self.t_last = None                      # perf_counter() at the previous step's end
        self.step_s = 0.0                       # the longest recent step
        self.epoch_end_s = 0.0                  # the longest validation + checkpoint encoding seen (budget margin)
        self.write_s = 0.0                      # the longest checkpoint write seen (in the background)
        self._previous = {}
        self.phase = "setup"                    # setup -> training (fit's loop) -> done

    def install(self) -> "StopVote":
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where a shell ignores it (`&`)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        # A Python signal handler runs in the main thread between bytecodes.
        name = signal.Signals(signum).name
        if self.phase == "training":
            # acted on at an agreed step's end; a repeat changes nothing (a launcher's forwarded copy may follow
            # the scheduler's own), and SIGKILL or Ctrl-C still end a stop that cannot finish
            self.signals.append(name)
            return
        if self.phase == "setup":  # nothing trained yet, nothing to save: stop now, as "run it again"
            self.phase = "done"
            raise Stopped(f"stopped on {name} before training began: nothing new to save; exit code "
                          f"{EXIT_STOPPED}. Run the same command again to start (train.resume=auto continues from "
                          f"the newest checkpoint, if any).")
        # after training (the work is saved): what the signal does without hvdfast
        self.uninstall()
        signal.raise_signal(signum)

    def _on_interrupt(self, signum, frame) -> None:
        """Ctrl-C, where it reaches a worker (`hvdfast train` started in a terminal; under a launcher the ranks
        have process groups of their own and horovodrun or mpirun turns it into SIGTERM): while training, the first
        is a stop request like a scheduler's, a checkpoint at the agreed step and exit 75 — before, the run ended
        with exit 130 and nothing saved since its last checkpoint (with the recipe's checkpoint_every 0: the whole
        run). A second Ctrl-C, or one outside training, interrupts at once, as Python does."""
        if self.phase != "training" or "SIGINT" in self.signals:
            raise KeyboardInterrupt
        self.signals.append("SIGINT")
        sys.stderr.write("hvdfast: Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit without "
                         "one)\n")
        sys.stderr.flush()

    def budget_left(self) -> float:
        return self.budget_s - (time.time() - self.process_start) if self.budget_s else float("inf")

    def _wish(self) -> list[float]:
        """[SIGUSR1 seen, SIGTERM seen, budget nearly spent, SIGINT seen] on this rank."""
        # Two steps of margin (the vote is read one step late) plus the slowest end-of-epoch work seen, which the
        # next step may run into (validation, checkpoint), and the stop's own checkpoint; a checkpoint's write, in
        # the background, counts twice too (a stop waits for the one in flight, then writes its own).
        near_end = self.budget_left() < 3 * self.step_s + 2 * (self.epoch_end_s + self.write_s)
        return [float("SIGUSR1" in self.signals), float("SIGTERM" in self.signals), float(near_end),
                float("SIGINT" in self.signals)]

    def vote(self, step: int) -> Optional[str]:
        now = time.perf_counter()
        if self.t_last is not None:
            self.step_s = max(now - self.t_last, 0.9 * self.step_s)  # decays slowly: a slow step is remembered
        self.t_last = now
        wish = self._wish()
        if self.size == 1:
            return _reason(wish)
        agreed = None
        if self.pending is not None:
            tensor, handle = self.pending
            dist.synchronize(handle)  # Horovod: done long ago, under this step's compute
            agreed = _reason(tensor.tolist())
        tensor = torch.tensor(wish, dtype=torch.float32)
        # Horovod: one fixed name, so the response cache knows it after the first step.
        self.pending = (tensor, dist.allreduce_async_(tensor, name="hvdfast.stop_vote", op="sum"))
        return agreed

    def epoch_end_took(self, seconds: float) -> None:
        self.epoch_end_s = max(self.epoch_end_s, seconds)
        self.t_last = time.perf_counter()  # the next step's time must not include it

    def drain(self) -> None:
        """Wait for the vote in flight (every rank has the same one) before anything else collective happens at
        the end of the run; after an elastic reset its handle is gone with the old Horovod, so just drop it."""
        if self.pending is not None:
            _, handle = self.pending
            self.pending = None
            dist.synchronize(handle)

    def forget(self) -> None:
        self.pending = None
        self.t_last = None


def _reason(votes: list[float]) -> Optional[str]:
    said = [f"{name}" + (f" on {int(n)} rank(s)" if name.startswith("SIG") else "")
            for name, n in zip(_REASONS, votes) if n > 0]
    return " and ".join(said) or None


def record(run_dir: Path, **fields) -> None:
    """Rank 0: what stopped the run, where, and how it continues (launchers read it for the exit code)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps({**fields, "exit_code": EXIT_STOPPED, "time": time.time()}, indent=1) + "\n")
    tmp.replace(run_dir / RECORD)


def clear(run_dir: Path) -> None:
    (run_dir / RECORD).unlink(missing_ok=True)


def read(run_dir: Path, since: float = 0.0) -> Optional[dict]:
    """The stop record of a run that stopped early after `since` (time.time()), or None."""
    try:
        rec = json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("time", 0) >= since else None
