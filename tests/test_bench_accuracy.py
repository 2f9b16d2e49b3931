"""bench/accuracy.py's pure parts: which settings decide a row's numbers, the formats' names, and the refusals made
before any timed run. (Its training runs are checked end to end in test_bench_cluster.)"""
from hvdfast.bench import accuracy

TUNED = {"horovod": {"compression": "powersgd", "bucket_mb": 25, "op": "prescaled", "cycle_time_ms": 5,
                     "mpi_allreduce": "recursive_doubling"}, "launcher": {"controller": "mpi"}}


def test_only_the_settings_that_change_the_numbers_make_a_format():
    base = {"horovod.compression": "powersgd", "horovod.bucket_mb": "25", "horovod.op": "prescaled"}
    assert accuracy.wire_settings(TUNED, []) == base
    # speed-only Horovod settings of an A/B row share the plain row's accuracy run; numeric ones and settings
    # outside the horovod section make their own
    assert accuracy.wire_settings(TUNED, ["horovod.cycle_time_ms=2", "horovod.mpi_allreduce=ring"]) == base
    assert accuracy.wire_settings(TUNED, ["horovod.powersgd_rank=2", "optim.lr=2.0"]) == {
        **base, "horovod.powersgd_rank": "2", "optim.lr": "2.0"}
    assert accuracy.wire_settings(None, ["horovod.compression=fp16"]) == {"horovod.compression": "fp16"}


def test_formats_are_named_by_their_wire_format_and_what_sets_twins_apart():
    psgd = {"horovod.compression": "powersgd", "horovod.bucket_mb": "25"}
    rank2 = {**psgd, "horovod.powersgd_rank": "2"}
    fp16 = {"horovod.compression": "fp16", "horovod.bucket_mb": "25"}
    assert accuracy.label(fp16, [psgd, fp16]) == "fp16"
    assert accuracy.label(psgd, [psgd, fp16]) == "powersgd"
    assert accuracy.label(rank2, [psgd, rank2]) == "powersgd (horovod.powersgd_rank=2)"
    assert accuracy.label(psgd, [psgd, rank2]) == "powersgd (horovod.powersgd_rank as in the recipe)"


def test_runs_that_could_not_train_are_refused_up_front(tmp_path):
    recipe = "launch/configs/digits-cpu.yaml"
    assert accuracy.unavailable(recipe, [f"data.dir={tmp_path / 'digits'}"], 1, None) is None  # written if missing
    why = accuracy.unavailable(recipe, [f"data.dir={tmp_path / 'imagenet'}"], 1, None)
    assert "has no train/ folder" in why and "--accuracy-seeds 0" in why
    assert accuracy.unavailable(recipe, [f"data.dir={tmp_path / 'imagenet'}"], 0, None) is None  # no runs, no data
    assert "must be > 0" in accuracy.unavailable(recipe, [], 1, 0.0)
    assert "must be >= 0" in accuracy.unavailable(recipe, [], -1, None)
