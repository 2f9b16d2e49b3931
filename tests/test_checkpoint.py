import os
from pathlib import Path

import pytest
import torch

from hvdfast import checkpoint
from hvdfast.checkpoint import CheckpointError


def _state(step, epoch=1):
    m = torch.nn.Linear(3, 2)
    return {"model": m.state_dict(), "optimizer": {}, "step": step, "epoch": epoch, "model_name": "lin",
            "num_classes": 2, "rng": checkpoint.rng_state()}


def test_save_load_and_keep_newest(tmp_path):
    for s in (10, 20, 30):
        checkpoint.save(tmp_path, _state(s), keep=2)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == [checkpoint.name_for(1, 30), checkpoint.name_for(1, 20)]
    st = checkpoint.load(tmp_path / names[0])
    assert st["step"] == 30 and st["format_version"] == checkpoint.FORMAT_VERSION
    assert not list(tmp_path.glob(".*tmp*"))


def test_pruning_a_checkpoint_removes_the_ranks_parts_beside_it(tmp_path):
    # a run of 3 ranks wrote s10 and s14; the run resumed with 2 ranks and writes s20: rank 2's part of s10 would
    # outlive its checkpoint (rank 2 no longer runs to prune it)
    for s in (10, 14):
        for r in (0, 1, 2):
            checkpoint.store_rank_state(tmp_path, 1, s, r, checkpoint.encode({"error": [], "world_size": 3}), keep=2)
        checkpoint.save(tmp_path, _state(s), keep=2)
    for r in (0, 1):
        checkpoint.store_rank_state(tmp_path, 1, 20, r, checkpoint.encode({"error": [], "world_size": 2}), keep=2)
    checkpoint.save(tmp_path, _state(20), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [checkpoint.INDEX, checkpoint.name_for(1, 14), checkpoint.name_for(1, 20)]
        + [checkpoint.rank_state_path(Path(checkpoint.name_for(1, 14)), r).name for r in (0, 1, 2)]
        + [checkpoint.rank_state_path(Path(checkpoint.name_for(1, 20)), r).name for r in (0, 1)])


def test_newest_is_the_last_written_not_the_highest_step(tmp_path):
    # a run resumed at a larger global batch numbers the same images with smaller steps (23 at batch 64 = 15 at 96)
    for s in (23, 17):
        checkpoint.save(tmp_path, _state(s), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [checkpoint.name_for(1, 17),
                                                                      checkpoint.name_for(1, 23)]
    checkpoint.save(tmp_path, _state(20), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [checkpoint.name_for(1, 20),
                                                                      checkpoint.name_for(1, 17)]
    # a file system whose times are coarser than the writes: the higher step of one modification time first
    for p in tmp_path.iterdir():
        os.utime(p, ns=(10**18, 10**18))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [checkpoint.name_for(1, 20),
                                                                      checkpoint.name_for(1, 17)]


def _copy_newest_last_written_first(src: Path, dst: Path) -> None:
    """A copy as `cp -r`, scp or a parallel object-store download makes one: every file gets the time it was
    copied, here the newest checkpoint first (so it looks the oldest)."""
    import shutil
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir(), key=lambda p: p.name, reverse=True):
        shutil.copyfile(p, dst / p.name)
        os.utime(dst / p.name, ns=(10**18 + len(os.listdir(dst)), 10**18 + len(os.listdir(dst))))


def test_a_copied_run_resumes_from_its_newest_checkpoint_whatever_the_file_times(tmp_path):
    # seen before the index: a run folder copied with `cp -r` (files written in the order the copy met them)
    # resumed from step 35 of a run that had reached step 45, and trained those 10 steps again
    for s in (35, 40, 45):
        for r in (0, 1):
            checkpoint.store_rank_state(tmp_path / "a" / "checkpoints", 1, s, r, checkpoint.encode({"error": []}), 3)
        checkpoint.save(tmp_path / "a" / "checkpoints", _state(s), keep=3)
    _copy_newest_last_written_first(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    copy = tmp_path / "b" / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(copy)] == [checkpoint.name_for(1, s) for s in (45, 40, 35)]
    path, state, notes = checkpoint.find_resume(tmp_path / "b", "auto")
    assert path == copy / checkpoint.name_for(1, 45) and state["step"] == 45 and notes == []
    # the next checkpoint prunes the oldest, and each rank's part of it (not of the newest)
    for r in (0, 1):
        checkpoint.store_rank_state(copy, 1, 50, r, checkpoint.encode({"error": []}), keep=3)
    checkpoint.save(copy, _state(50), keep=3)
    kept = [checkpoint.name_for(1, s) for s in (40, 45, 50)]
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [checkpoint.INDEX, *kept] + [f"{name}.rank{r:05d}" for name in kept for r in (0, 1)])
    # a run folder from before the index (or an index that cannot be read): the file times decide, as they did
    (copy / checkpoint.INDEX).write_text("{not json")
    assert [p.name for p in checkpoint.list_checkpoints(copy)] == [checkpoint.name_for(1, s) for s in (50, 40, 45)]


def test_a_write_killed_after_the_index_names_it_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, _state(10), keep=2)
    real = os.replace

    def killed(src, dst):
        if Path(dst).name == checkpoint.name_for(1, 20):
            raise KeyboardInterrupt  # the process ends between the index's rename and the checkpoint's
        real(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, _state(20), keep=2)
    monkeypatch.setattr(os, "replace", real)
    assert checkpoint.read_index(tmp_path)[0] == checkpoint.name_for(1, 20)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [checkpoint.name_for(1, 10)]
    checkpoint.save(tmp_path, _state(30), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [checkpoint.name_for(1, 30),
                                                                      checkpoint.name_for(1, 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [checkpoint.INDEX, checkpoint.name_for(1, 30), checkpoint.name_for(1, 10)])


def test_resume_never_says_the_earlier_checkpoints_give_way(tmp_path):
    checkpoint.save(tmp_path / "checkpoints", _state(40), keep=2)
    path, state, notes = checkpoint.find_resume(tmp_path, "never")
    assert path is None and state is None and notes == [
        f"train.resume=never: starting over in {tmp_path}; its 1 earlier checkpoint(s) give way to this run's as it "
        f"writes them (train.keep_checkpoints newest kept)"]
    assert checkpoint.find_resume(tmp_path / "elsewhere", "never") == (None, None, [])


def test_rng_state_round_trip():
    st = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.set_rng_state(st)
    assert torch.equal(torch.rand(3), a)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    p = checkpoint.save(tmp_path, _state(5), keep=3)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not an hvdfast checkpoint"):
        checkpoint.load(p)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an hvdfast checkpoint"):
        checkpoint.load(foreign)


def test_resume_auto_skips_a_damaged_newest_checkpoint(tmp_path):
    run = tmp_path
    checkpoint.save(run / "checkpoints", _state(10), keep=3)
    newest = checkpoint.save(run / "checkpoints", _state(20), keep=3)
    newest.write_bytes(b"garbage")
    path, state, notes = checkpoint.find_resume(run, "auto")
    assert state["step"] == 10 and path.name == checkpoint.name_for(1, 10)
    assert notes and "skipping unusable checkpoint" in notes[0]
    assert checkpoint.find_resume(run, "never")[:2] == (None, None)


def test_incompatible_model_is_refused(tmp_path):
    st = _state(1)
    with pytest.raises(CheckpointError, match="holds lin with 2 classes.*resnet50 with 10 classes"):
        checkpoint.check_compatible(st, tmp_path / "x.pt", "resnet50", 10)


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    code = f"""
import torch
from hvdfast import checkpoint
import os
from pathlib import Path
d = Path({str(tmp_path)!r})
checkpoint.save(d, {{"model": {{"w": torch.ones(3)}}, "step": 1, "epoch": 0, "model_name": "m",
                    "num_classes": 2}}, keep=5)
print("first", flush=True)
big = torch.zeros(400_000_000 // 4)
while True:
    checkpoint.save(d, {{"model": {{"w": big}}, "step": 2, "epoch": 0, "model_name": "m", "num_classes": 2}},
                    keep=5)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first"
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".ckpt-*.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.glob(".ckpt-*.tmp-*")), "the writer never started its second checkpoint"
    proc.send_signal(signal.SIGKILL)                 # killed in the middle of writing 400 MB
    proc.wait(timeout=30)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert checkpoint.name_for(0, 1) in names
    for name in names:  # whatever made it to its final name is complete
        checkpoint.load(tmp_path / name)
    st = checkpoint.load(tmp_path / checkpoint.name_for(0, 1))
    assert torch.equal(st["model"]["w"], torch.ones(3))


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    checkpoint.save(tmp_path, _state(10), keep=3)
    final = tmp_path / checkpoint.name_for(1, 20)
    tmp = tmp_path / f".{final.name}.tmp-{os.getpid()}"
    tmp.symlink_to("/dev/full")                      # every write to it fails with ENOSPC
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous checkpoint .*s00000010.pt "
                                              r"is intact\. Free space in .* \(or set train.run_dir elsewhere\)\.$"):
        checkpoint.save(tmp_path, _state(20), keep=3)
    assert not final.exists() and not tmp.exists()
    assert checkpoint.load(tmp_path / checkpoint.name_for(1, 10))["step"] == 10


def test_writer_saves_the_state_as_encoded_while_training_changes_it(tmp_path):
    # encode() is the copy: what training does to the tensors afterwards is not in the file.
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    data = checkpoint.encode({"model": {"w": w}, "step": 7, "epoch": 1, "model_name": "m", "num_classes": 2})
    writer = checkpoint.Writer()
    writer.submit(lambda: checkpoint.store(tmp_path, 1, 7, data, keep=2))
    w.add_(100)
    writer.wait()
    saved = checkpoint.load(tmp_path / checkpoint.name_for(1, 7))
    assert torch.equal(saved["model"]["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert saved["format_version"] == checkpoint.FORMAT_VERSION


def test_writer_runs_in_the_background_one_write_at_a_time():
    import threading
    release, order = threading.Event(), []
    writer = checkpoint.Writer()
    writer.submit(lambda: (release.wait(30), order.append("first")))
    writer.check()                       # returns at once: the write is still running
    assert order == []
    threading.Timer(0.2, release.set).start()
    writer.submit(lambda: order.append("second"))  # waits for the first
    assert order[0] == "first"
    writer.wait()
    assert order == ["first", "second"]


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path):
    data = checkpoint.encode(_state(3))
    first = checkpoint.save(tmp_path, _state(2), keep=3)
    # the write's tmp file (the same process writes it) is /dev/full: the write fails with ENOSPC
    (tmp_path / f".{checkpoint.name_for(1, 3)}.tmp-{os.getpid()}").symlink_to("/dev/full")
    writer = checkpoint.Writer()
    writer.submit(lambda: checkpoint.store(tmp_path, 1, 3, data, keep=3))
    with pytest.raises(CheckpointError, match=f"No space left on device.*previous checkpoint {first} is intact"):
        writer.wait()
    writer.wait()                        # raised once
    assert checkpoint.list_checkpoints(tmp_path) == [first]


def test_an_error_in_training_lets_the_write_finish_and_stands(tmp_path):
    data = checkpoint.encode(_state(4))
    writer = checkpoint.Writer()
    with pytest.raises(KeyError, match="training failed"):
        with writer.finishing():
            writer.submit(lambda: checkpoint.store(tmp_path, 1, 4, data, keep=2))
            raise KeyError("training failed")
    assert checkpoint.load(tmp_path / checkpoint.name_for(1, 4))["step"] == 4


def test_the_line_that_ends_a_failed_run_says_what_a_rerun_does(tmp_path):
    """checkpoint.rerun_note: read from the run folder as it is, for the line that ends a failed run. It said "it
    continues from the newest checkpoint" where none had been written (the rerun started over) and under
    train.resume=never."""
    none_yet = ("it starts over, as no checkpoint was written yet (train.checkpoint_every and "
                "train.checkpoint_every_steps set how often one is)")
    assert checkpoint.rerun_note(tmp_path, "auto") == none_yet
    assert checkpoint.rerun_note(tmp_path, "never") == ("it starts over (train.resume=never; with train.resume=auto "
                                                         "it would continue from the newest checkpoint, once one is "
                                                         "written)")
    for s in (10, 20):
        checkpoint.save(tmp_path / "checkpoints", _state(s), keep=2)
    newest = tmp_path / "checkpoints" / checkpoint.name_for(1, 20)
    assert checkpoint.rerun_note(tmp_path, "auto") == f"it continues from {newest} (train.resume=auto)"
    assert checkpoint.rerun_note(tmp_path, "never") == (f"it starts over (train.resume=never; with train.resume=auto "
                                                         f"it would continue from {newest})")
    assert checkpoint.rerun_note(tmp_path, "/x/c.pt") == "it starts from /x/c.pt again (train.resume)"
