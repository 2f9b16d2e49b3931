"""hvdfast train through the real horovodrun with 2 ranks: ranks stay identical and the model learns."""
import json
import sys

import pytest

from conftest import ROOT, SHORT_VAL_PER_CLASS, run_launcher


@pytest.fixture(scope="module")
def trained(short_digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train2")
    # plain Horovod averaging (the digits recipe itself uses gradient buckets and op=prescaled)
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/train_ranks.py"), str(out),
                                    str(short_digits_dir), "none,fp16,bf16", "horovod.bucket_mb=0",
                                    "horovod.op=average"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)], proc.stdout


@pytest.mark.parametrize("compression", ["none", "fp16", "bf16"])
def test_parameters_identical_on_both_ranks(trained, compression):
    _, ranks, _ = trained
    assert ranks[0][compression]["params"] == ranks[1][compression]["params"]


@pytest.mark.parametrize("compression", ["none", "fp16", "bf16"])
def test_two_rank_training_learns(trained, compression):
    out, ranks, _ = trained
    rows = [json.loads(line) for line in (out / compression / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) >= 3
    assert train[-1]["loss"] < 0.7 * train[0]["loss"]
    val = [r for r in rows if r["kind"] == "val"]
    assert val and val[-1]["images"] == 10 * SHORT_VAL_PER_CLASS  # every validation image once over 2 ranks
    assert ranks[0][compression]["best_top1"] > 30   # 10 classes: chance is 10%


def test_run_directory_has_what_a_user_expects(trained):
    out, _, stdout = trained
    run = out / "none"
    assert (run / "config.yaml").is_file() and (run / "versions.json").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "checkpoints").glob("ckpt-*.pt"))
    versions = json.loads((run / "versions.json").read_text())
    assert versions["workers"] == 2 and versions["horovod"]["version"] == "0.28.1"
    assert versions["cpu_capability"] and versions["cpu_bf16"] in (True, False)  # what a CPU run's speed depends on
    import nvidia.dali  # read from the installed distribution where the run did not import DALI
    assert versions["dali"] == nvidia.dali.__version__
    assert "SUMMARY best top-1" in stdout
    # only rank 0 reports
    assert "[1]<stdout>:SUMMARY" not in stdout


def test_compiled_model_still_allreduces_every_gradient(short_digits_dir, tmp_path):
    # model.compile=true: the compiled module shares its parameters with the one Horovod wraps. Were any gradient
    # not averaged, or an update applied to a copy, the ranks (different shards) would end with different parameters.
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/train_ranks.py"), str(tmp_path),
                                    str(short_digits_dir), "none", "model.compile=true", "train.epochs=1"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["none"]["params"] == ranks[1]["none"]["params"]
    assert ranks[0]["none"]["best_top1"] > 20  # 10 classes: chance is 10%


@pytest.mark.parametrize("how", [["horovod.op=prescaled", "horovod.bucket_mb=0"],
                                 ["horovod.bucket_mb=4", "horovod.op=average"],
                                 ["horovod.bucket_mb=4", "horovod.op=prescaled"],
                                 ["horovod.bucket_mb=4", "horovod.op=prescaled", "horovod.last_bucket_mb=0.25"]])
def test_faster_averaging_trains_the_same_model_as_horovods_average(trained, short_digits_dir, tmp_path, how):
    # op=prescaled divides the loss by the worker count and lets Horovod sum. With 2 workers the division is by a
    # power of two, exact in binary floating point; buckets reduce the same numbers elementwise, only grouped into
    # fewer tensors (with a small last bucket too). Each must reproduce op=average's parameters bit for bit.
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/train_ranks.py"), str(tmp_path),
                                    str(short_digits_dir), "none", *how], timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _, average, _ = trained
    prescaled = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert prescaled[0]["none"]["params"] == prescaled[1]["none"]["params"] == average[0]["none"]["params"]


def test_powersgd_composes_with_buckets_prescaled_and_accumulation(short_digits_dir, tmp_path):
    # the digits recipe's buckets and op=prescaled, plus 2 micro-batches per step and gradient clipping: the ranks
    # end bit-identical (the same factors are reduced everywhere) and the model learns
    proc = run_launcher("mpirun", 2, [sys.executable, str(ROOT / "tests/parallel/train_ranks.py"), str(tmp_path),
                                      str(short_digits_dir), "powersgd", "horovod.bucket_mb=2",
                                      "horovod.backward_passes_per_step=2", "optim.clip_grad_norm=5"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["powersgd"]["params"] == ranks[1]["powersgd"]["params"]
    assert ranks[0]["powersgd"]["best_top1"] > 30  # 10 classes: chance is 10%
