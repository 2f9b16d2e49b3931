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
    assert checkpoint.find_resume(run, "never") == (None, None, [])


def test_incompatible_model_is_refused(tmp_path):
    st = _state(1)
    with pytest.raises(CheckpointError, match="holds lin with 2 classes.*resnet50 with 10 classes"):
        checkpoint.check_compatible(st, tmp_path / "x.pt", "resnet50", 10)
