"""Hang diagnosis: when this rank makes no progress for `timeout_s`, dump every thread's Python stack to
RUN_DIR/hang/rank<r>.txt; rank 0 then reads all ranks' dumps and names the rank that is behind and where.

Collective jobs hang as a whole: one rank stuck in its data loader leaves every other rank waiting in the gradient
allreduce, and Horovod's own stall warning names tensors, not the rank. Each rank's watchdog is a daemon thread
that only reads two attributes the training loop sets (no locks, nothing on the hot path but assignments), and the
dump uses faulthandler, which works while the main thread is blocked in C code.
"""
from __future__ import annotations

import faulthandler
import os
import re
import sys
import threading
import time
from pathlib import Path

from .process import ranges

EXIT_CODE = 3


class Watchdog:
    def __init__(self, run_dir: Path, rank: int, size: int, timeout_s: float, resume: str = "auto"):
        self.dir = Path(run_dir) / "hang"
        self.resume = resume  # train.resume: what a rerun does (checkpoint.rerun_note)
        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        self.phase, self.step, self.last = "starting", 0, time.monotonic()
        if timeout_s > 0:
            threading.Thread(target=self._watch, name="hvdfast-watchdog", daemon=True).start()

    def stop(self) -> None:
        self.timeout_s = float("inf")

    def beat(self, phase: str, step: int | None = None) -> None:
        self.phase = phase
        if step is not None:
            self.step = step
        self.last = time.monotonic()

    def watch(self, batches, phase: str = "data loader", then: str = "training step"):
        """Wrap a batch iterator: waiting for the next batch is `phase`, everything else `then`."""
        it = iter(batches)
        while True:
            self.beat(phase)
            try:
                batch = next(it)
            except StopIteration:
                return
            self.beat(then)
            yield batch

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout_s / 4))
            if self.timeout_s == float("inf"):
                return
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"rank{self.rank}.txt"
        with open(path, "w") as f:
            f.write(f"rank {self.rank} phase={self.phase} step={self.step} idle={idle:.0f}s\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        if self.rank != 0:
            time.sleep(20)  # give rank 0 time to read this and report before the launcher tears the job down
            os._exit(EXIT_CODE)
        reports = self._collect(deadline=time.monotonic() + 15)
        from .checkpoint import rerun_note
        print("hvdfast: error: " + diagnose(reports, idle, self.dir, self.size)
              + f"; fix the cause and run the same command again: {rerun_note(self.dir.parent, self.resume)}.",
              file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)

    def _collect(self, deadline: float) -> dict:
        reports = {}
        while time.monotonic() < deadline and len(reports) < self.size:
            for r in range(self.size):
                p = self.dir / f"rank{r}.txt"
                if r not in reports and p.is_file():
                    text = p.read_text(errors="replace")
                    if "File " in text or "Thread " in text:
                        reports[r] = text
            time.sleep(0.2)
        return reports


_HEAD = re.compile(r"rank (\d+) phase=(.*?) step=(\d+) idle=")


def diagnose(reports: dict, idle: float, where: Path, size: int) -> str:
    """One message naming the rank that is behind (lowest step; a rank in its data loader first), or saying that
    none is: every rank of `size` at the same step in the same phase waits on the others in a collective that does
    not complete (a link, switch or host between them that failed), or all in their data loaders on storage that
    does not answer."""
    parsed = {}
    for r, text in reports.items():
        m = _HEAD.match(text)
        if m:
            parsed[r] = (m.group(2), int(m.group(3)))
    if not parsed:
        return f"no training progress for {idle:.0f} s and no rank wrote a stack dump; look at {where}"
    missing = sorted(set(range(size)) - set(parsed))  # (rank 0 reads the dumps of ranks 0 .. size-1)
    if len(parsed) > 1 and not missing and len(set(parsed.values())) == 1:
        phase, step = next(iter(parsed.values()))
        why = ("their data's storage does not answer (a network file system?)" if phase == "data loader" else
               "they wait on each other in a collective that does not complete: the network between them (a link, "
               "switch or host that failed), or Horovod itself")
        return (f"no training progress for {idle:.0f} s. No rank is behind: all {len(parsed)} are in the {phase} at "
                f"step {step}; {why}. Every rank's stacks are in {where}/")
    behind = min(parsed, key=lambda r: (parsed[r][1], parsed[r][0] != "data loader", r))
    phase, step = parsed[behind]
    others = sorted(set(parsed) - {behind})
    msg = (f"no training progress for {idle:.0f} s. rank {behind} is behind: in the {phase} at step {step} "
           f"(stack: {where / f'rank{behind}.txt'})")
    if others:
        msg += "; " + ", ".join(f"rank {r} in the {parsed[r][0]} at step {parsed[r][1]}" for r in others)
    if missing:
        msg += (f"; no dump from rank(s) {ranges(missing)} (dead, stuck without Python, or writing to another "
                f"host's {where.name}/)")
    return msg + f". Every rank's stacks are in {where}/"
