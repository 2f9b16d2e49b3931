"""Checkpoints that survive crashes: atomic write (tmp -> fsync -> rename), the newest K (last written) kept, safe
load, written in the background while training goes on (encode() in the training thread, then Writer: the bytes to
disk on a thread of their own).

Which checkpoint is newest is written down, not inferred: checkpoints/index.json lists them newest first (as
TensorFlow's CheckpointManager keeps its `checkpoint` state file), updated before each new file is renamed into
place. File modification times decide only for files it does not list (a run directory written before the index
existed, a node's own folder of rank parts); a copy made with `cp -r`, scp or an object-store download gives
every file a new time in whatever order it copied them, and resume then went back to an older checkpoint.

Files are torch.save'd plain containers (tensors, numbers, strings, lists, dicts) and are loaded with
weights_only=True, so a checkpoint cannot run code.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")
_STEP = re.compile(r"^ckpt-e\d+-s(\d+)\.pt(\.rank\d+)?$")  # a checkpoint or a rank's part of it
INDEX = "index.json"  # the checkpoints, newest first (rank 0 writes it; module docstring)
BEST = "best.pt"      # in the run folder: the best validation's weights (store_best)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint (or best.pt) that could not be written. The message says what is intact and where to free
    space; the caller that knows the run's train.resume adds what running the same command again does (cli:
    rerun_note, read from the folder after the failed file was removed)."""


def name_for(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:08d}.pt"


def _newest_first(paths) -> list[Path]:
    """Checkpoints (or the ranks' parts of them) that the index does not list, most recently modified first: time,
    then step. Not by step alone: a run's step numbers restart when it resumes with a larger global batch (step 23
    of 64 images = step 15 of 96) or starts over in the same run_dir (train.resume=never), and the step order would
    then keep and resume the other run's files."""
    found = []
    for p in paths:
        if not (m := _STEP.match(p.name)):
            continue
        try:
            found.append((p.stat().st_mtime_ns, int(m.group(1)), p))
        except FileNotFoundError:  # pruned while we listed
            pass
    return [p for *_, p in sorted(found, key=lambda f: f[:2], reverse=True)]


def read_index(directory: Path) -> list[str]:
    """The checkpoint names index.json lists, newest first ([] when there is none or it cannot be read: the
    modification times decide then)."""
    try:
        names = json.loads((directory / INDEX).read_text()).get("newest_first")
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and _NAME.match(n)] if isinstance(names, list) else []


def _write_index(directory: Path, newest_first: list[Path]) -> None:
    """index.json, atomically (tmp -> fsync -> rename; the directory is fsynced with the checkpoint's rename)."""
    tmp = directory / f".{INDEX}.tmp-{os.getpid()}"
    text = json.dumps({"about": "hvdfast's checkpoints in this folder, newest first: the order resume and pruning "
                                "follow (file times are not used)",
                       "newest_first": [p.name for p in newest_first]}, indent=1)
    try:
        with open(tmp, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / INDEX)
    finally:
        tmp.unlink(missing_ok=True)


def _ordered(paths, directory: Path) -> list[Path]:
    """Checkpoints, or the ranks' parts of them, newest first: in the index's order (a part goes where its
    checkpoint is listed), then those it does not list by modification time (_newest_first)."""
    paths = list(paths)
    position = {name: i for i, name in reversed(list(enumerate(read_index(directory))))}
    of = {p: p.name.split(".pt")[0] + ".pt" for p in paths}  # the checkpoint a file is (part of)
    listed = sorted((p for p in paths if of[p] in position), key=lambda p: position[of[p]])
    return listed + _newest_first(p for p in paths if of[p] not in position)


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, newest (most recently written) first."""
    if not directory.is_dir():
        return []
    return _ordered((p for p in directory.iterdir() if _NAME.match(p.name)), directory)


def rerun_note(run_dir: Path, resume: str) -> str:
    """What running the same command again does, read from the run folder as it is now (for the line that ends a
    failed run): continue from its newest checkpoint, start over (none written yet, or train.resume=never), or start
    from the checkpoint train.resume names."""
    newest = list_checkpoints(Path(run_dir) / "checkpoints")
    if resume == "auto":
        return (f"it continues from {newest[0]} (train.resume=auto)" if newest else
                "it starts over, as no checkpoint was written yet (train.checkpoint_every and "
                "train.checkpoint_every_steps set how often one is)")
    if resume == "never":
        return ("it starts over (train.resume=never; with train.resume=auto it would continue from "
                + (f"{newest[0]})" if newest else "the newest checkpoint, once one is written)"))
    return f"it starts from {resume} again (train.resume)"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": [list(x) if isinstance(x, tuple) else x
                                                      for x in random.getstate()]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def encode(state: dict) -> memoryview:
    """The checkpoint file's bytes (torch.save of the state with its format version): a copy of the state that
    training can no longer change, made in the training thread; writing them can then happen in the background."""
    buf = io.BytesIO()
    torch.save(dict(state, format_version=FORMAT_VERSION), buf)
    return buf.getbuffer()


def save(directory: Path, state: dict, keep: int) -> Path:
    """Write atomically; on any failure (disk full, kill) the previous checkpoints stay intact."""
    return store(directory, int(state["epoch"]), state["step"], encode(state), keep)


def store(directory: Path, epoch: int, step: int, data, keep: int) -> Path:
    """save() of encoded bytes (encode()): the checkpoint of (epoch, step), then the newest `keep` kept."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name_for(epoch, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    for stale in [*directory.glob(".ckpt-*.pt.tmp-*"), *directory.glob(f".{INDEX}.tmp-*")]:
        if stale != tmp:  # left by a process killed mid-write (not the ranks' files)
            stale.unlink(missing_ok=True)
    earlier = [p for p in list_checkpoints(directory) if p != final]
    # the index names the new file before it is renamed into place: a crash in between leaves a name with no file
    # (skipped), never a newest file the index ranks below older ones
    _write(final, tmp, data, before_rename=lambda: _write_index(directory, [final, *earlier[:keep - 1]]))
    for old in earlier[keep - 1:]:
        old.unlink(missing_ok=True)
        # the ranks' parts of a checkpoint that is gone: on a shared file system rank 0 sees them all (a rank's own
        # pruning keeps its newest `keep`, which can outlive the checkpoint after a resume at another world size)
        for part in directory.glob(f"{glob.escape(old.name)}.rank*"):
            part.unlink(missing_ok=True)
    return final


class Writer:
    """One process's checkpoint writes, in a background thread, one at a time: training goes on while encoded
    bytes (encode(): the serialising, which holds Python's GIL, stays in the training thread) reach the disk.
    Without it rank 0 holds every rank at the next allreduce until the file is written and synced. submit() first
    waits for the write before it; wait() before anything that needs the file (a stop, the end of the run). A
    write's failure is raised in the training thread at the next check(), submit() or wait(), with the message the
    synchronous write gave."""

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self.longest_s = 0.0  # the longest write so far (what a stop must leave time for)

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            start = time.perf_counter()
            try:
                write()
            except BaseException as exc:  # handed to the training thread
                self._error = exc
            self.longest_s = max(self.longest_s, time.perf_counter() - start)

        # not a daemon: a process that ends while a write runs finishes it first (nothing half-written is lost)
        self._thread = threading.Thread(target=run, name="hvdfast-checkpoint")
        self._thread.start()

    def check(self) -> None:
        """Raise the error of a write that has failed (cheap: after every step)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait(self) -> None:
        """The write in flight finished (its error raised here)."""
        self._join()
        self.check()

    @contextlib.contextmanager
    def finishing(self):
        """Around training: when it ends, the last write has finished (its error raised); when another error ends
        it, the write in flight still finishes and that error stands."""
        try:
            yield self
        except BaseException:
            self._join()
            raise
        self.wait()


def rank_state_path(ckpt: Path, rank: int) -> Path:
    """Where one rank's own part of checkpoint `ckpt` lives (what differs between ranks: PowerSGD's error)."""
    return ckpt.with_name(f"{ckpt.name}.rank{rank:05d}")


def store_best(run_dir: Path, data) -> Path:
    """RUN_DIR/best.pt, atomically: the weights of the best validation top-1 and what to use them with (encode()d
    by the caller: model, model_name, num_classes, classes, top1, epoch, step, config; kind "best weights")."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = run_dir / BEST, run_dir / f".{BEST}.tmp-{os.getpid()}"
    for stale in run_dir.glob(f".{BEST}.tmp-*"):  # left by a process killed mid-write
        if stale != tmp:
            stale.unlink(missing_ok=True)
    _write(final, tmp, data, checkpoints=run_dir / "checkpoints")
    return final


def store_rank_state(directory: Path, epoch: int, step: int, rank: int, data, keep: int) -> Path:
    """Every rank writes its own part (encode()d) beside the checkpoint of (epoch, step), atomically, and keeps its
    newest `keep`. Rank-local: with no shared file system each node keeps its ranks' parts."""
    directory.mkdir(parents=True, exist_ok=True)
    final = rank_state_path(directory / name_for(epoch, step), rank)
    _write(final, directory / f".{final.name}.tmp-{os.getpid()}", data)
    # this part is the newest (its checkpoint is written after it, and then indexed); the others in the index's
    # order where rank 0's index is here (a shared file system), else by modification time
    others = _ordered((p for p in directory.glob(f"ckpt-e*-s*.pt.rank{rank:05d}") if p != final), directory)
    for old in others[keep - 1:]:
        old.unlink(missing_ok=True)
    return final


def load_rank_state(ckpt: Path, rank: int) -> Optional[dict]:
    """This rank's part of `ckpt`, or None when it has none or it cannot be read (the caller starts that part
    fresh and says so)."""
    try:
        state = torch.load(rank_state_path(ckpt, rank), map_location="cpu", weights_only=True)
    except Exception:
        return None
    return state if isinstance(state, dict) and state.get("format_version") == FORMAT_VERSION else None


def _write(final: Path, tmp: Path, data, before_rename: Optional[Callable[[], None]] = None,
           checkpoints: Optional[Path] = None) -> None:
    """`checkpoints`: the folder whose newest checkpoint a failure names as intact (default: final's folder)."""
    directory = final.parent
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, final)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        previous = list_checkpoints(checkpoints or directory)
        kept = f"the previous checkpoint {previous[0]} is intact" if previous else "no earlier checkpoint exists"
        what = "" if final.name == BEST else "checkpoint "
        raise CheckpointWriteError(f"could not write {what}{final} ({exc.strerror or exc}); {kept}. Free "
                                   f"space in {directory} (or set train.run_dir elsewhere).") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); it is truncated or not an hvdfast checkpoint. "
                              f"Delete it to resume from an older one, or set train.resume=never.") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"'{path}' is not an hvdfast checkpoint (format {FORMAT_VERSION}); "
                              f"point train.resume at one written by hvdfast, or set train.resume=never.")
    if state.get("kind") == "best weights":
        raise CheckpointError(f"'{path}' holds the weights of a run's best validation only (no optimizer state, "
                              f"step or RNG to continue from); point train.resume at a checkpoint in the run's "
                              f"checkpoints/ folder.")
    return state


def check_compatible(state: dict, path: Path, model_name: str, num_classes: int) -> None:
    if state.get("model_name") != model_name or state.get("num_classes") != num_classes:
        raise CheckpointError(
            f"checkpoint '{path}' holds {state.get('model_name')} with {state.get('num_classes')} classes, but this "
            f"run builds {model_name} with {num_classes} classes. Use another run_dir, or train.resume=never.")


def find_resume(run_dir: Path, resume: str) -> tuple[Optional[Path], Optional[dict], list[str]]:
    """(path, state) of the checkpoint to resume from ((None, None) = start fresh), and notes about unusable
    newer files that were passed over."""
    if resume == "never":
        earlier = list_checkpoints(run_dir / "checkpoints")
        return None, None, [f"train.resume=never: starting over in {run_dir}; its {len(earlier)} earlier "
                            f"checkpoint(s) give way to this run's as it writes them (train.keep_checkpoints newest "
                            f"kept)"] if earlier else []
    if resume != "auto":
        p = Path(resume)
        if not p.is_file():
            raise CheckpointError(f"train.resume='{resume}' is not a file; give a checkpoint path, auto or never.")
        return p, load(p), []
    notes = []
    for p in list_checkpoints(run_dir / "checkpoints"):
        try:
            return p, load(p), notes
        except CheckpointError as exc:
            notes.append(f"skipping unusable checkpoint: {exc}")
    return None, None, notes
