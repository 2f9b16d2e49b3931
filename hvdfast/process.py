"""How a process of ours ends, and who speaks for the job as it does (this_rank; internal_error for a bug). A leaf:
imports nothing from hvdfast (the CLI and the bench workers both use it)."""
from __future__ import annotations

import os
import re
import sys
import time
import traceback
from pathlib import Path

# Where the launchers put a worker's rank (horovodrun, Open MPI's mpirun, MPICH/Intel MPI, PMIx, SLURM's srun).
RANK_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


# The one line each rank but 0 writes on a bug (internal_error), as a launcher relays it (tagged by horovodrun, or not:
# mpirun): `hvdfast launch` folds the repeats (launch.supervisor.StderrRelay).
BUG_LINE = re.compile(r"^(?:\[\d+(?:,\d+)?\]<stderr>:)?hvdfast: internal error \(rank (?P<rank>\d+)\): "
                      r"(?P<what>.*?)(?:; traceback in (?P<dir>.*)/rank\d+\.txt)?$")


def this_rank() -> int:
    """This process's rank, for who prints: Horovod's own where it runs here (an elastic reset renumbers the ranks,
    while the launcher's variable keeps the rank the process started as: the survivor of a dead rank 0 is rank 0
    with HOROVOD_RANK=1), else as the launcher told it (before Horovod starts, after it shut down), else 0."""
    hvd = sys.modules.get("horovod.torch")  # only where this process imported it: nothing to start here
    if hvd is not None:
        try:
            if hvd.is_initialized():
                return hvd.rank()
        except (AttributeError, ValueError):  # shut down under us
            pass
    for var in RANK_VARS:
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def launched() -> bool:
    """Whether a launcher started this process as one of a job's ranks (a lone `hvdfast train` is not)."""
    return any(var in os.environ for var in RANK_VARS)


RUN_FILES = "the traceback and the run's config.yaml and versions.json"


def internal_error(exc: BaseException, run_dir=None, rank: int | None = None, report: str = RUN_FILES) -> int:
    """A bug (ours, or a library's under us), not a user error, met by a launched rank: every rank usually meets it
    at once, and a traceback from each, interleaved line by line by the launcher, buries the one that matters. Rank
    0 prints its traceback and one line saying what it is and what to send; every other rank one line (its
    exception and where it was raised: a bug only some ranks meet is located too). Each rank's whole traceback goes
    to RUN_DIR/errors/rank<r>.txt where the run folder is known, as the watchdog's stack dumps go to hang/. Exit
    code 1, as Python's own for an uncaught exception. `rank` where the launcher is none of RANK_VARS' (torchrun's
    RANK), `report` what to send with it."""
    rank = this_rank() if rank is None else rank
    text = "".join(traceback.format_exception(exc))
    saved = _save(text, run_dir, rank)
    what = type(exc).__name__
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    if first:
        what += f": {first[:300]}"
    if rank == 0:
        where = (f"The traceback above is rank 0's; each rank's is in {saved.parent}/rank<r>.txt." if saved
                 else "The traceback above is rank 0's.")
        sys.stderr.write(text + f"hvdfast: internal error: {what}. This is a bug in hvdfast or in a library under "
                                f"it, not a problem with the config or the data. {where} Please report it with "
                                f"{report}.\n")
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        at = f" at {_short(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        sys.stderr.write(f"hvdfast: internal error (rank {rank}): {what}{at}"
                         + (f"; traceback in {saved}" if saved else "") + "\n")  # one write: one tagged line
    sys.stderr.flush()
    return 1


def ranges(ranks) -> str:
    """2, 3, 4, 7 -> '2-4, 7' (ranks, as a line that names them reads at 1,024)."""
    out, ranks = [], sorted(ranks)
    start = prev = ranks[0]
    for r in ranks[1:] + [None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if r is not None:
            start = prev = r
    return ", ".join(out)


def _save(text: str, run_dir, rank: int):
    """RUN_DIR/errors/rank<r>.txt holding `text`, or None (no run folder yet, or it cannot be written)."""
    if run_dir is None:
        return None
    path = Path(run_dir) / "errors" / f"rank{rank}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"rank {rank}, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n{text}")
    except OSError:
        return None
    return path


def _short(filename: str) -> str:
    """A source file's path from its package on (hvdfast/run/fit.py, torch/nn/functional.py), else as it is."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    here = Path(__file__).resolve().parent  # the hvdfast package
    try:
        return str(Path(filename).resolve().relative_to(here.parent))
    except ValueError:
        return filename


def lighten_exit() -> None:
    """For a process about to end: spare the interpreter's exit its cyclic garbage collection over every object
    torch, torchvision, timm, DALI and Horovod created (0.8-0.9 s of a 1.1 s teardown per process here, paid by
    every rank of every launch). The exit still joins threads, runs the atexit handlers (Horovod's shutdown,
    DALI's, logging's, the DataLoader workers'), calls MPI_Finalize and frees by reference count; what it skips is
    collecting cycles, whose memory the operating system takes back anyway. Our own files are closed before this
    (Reporter.close, checkpoints written whole)."""
    import gc
    gc.disable()
    gc.freeze()


def run_process(main_fn) -> None:
    """`if __name__ == "__main__"` of a module run as a process of its own (the bench workers): main, then the
    lighter exit."""
    try:
        code = main_fn()
    finally:
        lighten_exit()
    sys.exit(code)
