"""train.deterministic=true: the same command twice gives the same model, bit for bit, at any world size and op.

Horovod's tensor fusion packs the tensors that are ready in a cycle into one buffer; which ones those are depends on
timing, and a tensor's offset in the buffer decides the order of its sums (the ring's chunk at 3+ ranks, Adasum's
split of the buffer at any size). With fusion on, two identical runs here differed in the last bits: Adasum at 2
ranks from step 20 on, a plain average at 3 ranks (per-tensor hooks, a checkpoint every 5 steps) from the first
checkpoint on, its averaged BatchNorm statistics first. Deterministic runs turn fusion off (hvdfast/run/setup.py) and
say so."""
import pytest
import torch

from hvdfast import checkpoint

from conftest import run_launcher, train_args

CASES = {
    # Adasum on CPU tensors runs over MPI (Horovod 0.28.1 has none over Gloo)
    "adasum-2-ranks": ("mpirun", 2, ["optim.name=sgd", "horovod.op=adasum", "horovod.bucket_mb=0"]),
    "average-3-ranks": ("gloo", 3, ["horovod.op=average", "horovod.bucket_mb=0", "train.threads=1",
                                   "train.checkpoint_every_steps=5"]),
}


def final_state(run_dir) -> dict:
    return checkpoint.load(checkpoint.list_checkpoints(run_dir / "checkpoints")[0])["model"]


@pytest.mark.parametrize("case", CASES)
def test_the_same_deterministic_run_twice_ends_bit_identical(case, short_digits_dir, tmp_path):
    launcher, np, extra = CASES[case]
    states = []
    for name in ("first", "second"):
        run = tmp_path / name
        proc = run_launcher(launcher, np, train_args(short_digits_dir, run, *extra), timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "train.deterministic: Horovod's tensor fusion off" in proc.stdout
        states.append(final_state(run))
    a, b = states
    assert any(k.endswith("running_var") for k in a) and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []   # weights and BatchNorm buffers alike

