"""`hvdfast tune --hosts`' choice among wire formats, from measured throughputs (the measuring itself runs in
test_bench_cluster through the emulated hosts)."""
import pytest

from hvdfast import tune
from hvdfast.bench import allreduce


def pick(img_s: dict, controllers=("mpi",)) -> dict:
    """img_s: by compression, or by (controller, compression) where several controllers are measured."""
    def measure(overrides, steps, controller):
        comp = overrides[0].split("=")[1]
        assert "horovod.cycle_time_ms=5" in overrides  # every candidate measured with the cycle it would keep
        rate = img_s[(controller, comp)] if len(controllers) > 1 else img_s[comp]
        return [{"img_s": rate / 2, "wire_mb_per_step": 1.0, "controller": controller}] * 2
    return tune.tune_hosts(measure, steps=2, controllers=controllers)


def test_powersgd_is_chosen_only_when_clearly_faster_than_sending_whole_gradients():
    # a fast link: PowerSGD 3% faster than uncompressed is not worth its approximation
    doc = pick({"none": 20.0, "fp16": 19.0, "powersgd": 20.6})
    assert doc["horovod"] == {"compression": "none", "bucket_mb": 25.0, "op": "prescaled", "cycle_time_ms": 5.0}
    # a slow link: PowerSGD 2x faster wins (it needs gradient buckets, which every candidate uses)
    doc = pick({"none": 5.0, "fp16": 9.0, "powersgd": 18.0})
    assert doc["horovod"] == {"compression": "powersgd", "bucket_mb": 25.0, "op": "prescaled", "cycle_time_ms": 5.0}
    assert doc["why"][0].startswith("fastest across the hosts: compression powersgd")
    assert doc["launcher"]["controller"] == "mpi"
    # fp16 (rounded, but the whole gradient) needs no margin against none
    assert pick({"none": 10.0, "fp16": 10.2, "powersgd": 10.5})["horovod"]["compression"] == "fp16"


def test_the_controller_is_chosen_with_the_wire_format():
    both = ("mpi", "gloo")
    # uncompressed over Gloo beats MPI's fp16, and PowerSGD is not 5% ahead of it: Gloo + none
    doc = pick({("mpi", "none"): 8.0, ("mpi", "fp16"): 14.0, ("mpi", "powersgd"): 14.5,
                ("gloo", "none"): 14.2, ("gloo", "fp16"): 13.0, ("gloo", "powersgd"): 14.9}, both)
    assert doc["launcher"]["controller"] == "gloo" and doc["horovod"]["compression"] == "none"
    assert [(c["controller"], c["compression"]) for c in doc["candidates"]] == [
        (ctl, comp) for ctl in both for comp in ("none", "fp16", "powersgd")]
    assert doc["why"][0].startswith("fastest across the hosts: controller gloo, compression none")
    assert "mpi + powersgd: 14.50 img/s" in doc["why"][3]
    # PowerSGD's margin is against the best whole-gradient format on either controller
    doc = pick({("mpi", "none"): 8.0, ("mpi", "fp16"): 14.0, ("mpi", "powersgd"): 15.0,
                ("gloo", "none"): 10.0, ("gloo", "fp16"): 9.0, ("gloo", "powersgd"): 21.0}, both)
    assert (doc["launcher"]["controller"], doc["horovod"]["compression"]) == ("gloo", "powersgd")


def test_close_candidates_are_timed_again_in_reverse_and_chosen_by_their_mean():
    # first pass: none leads fp16 by 2.5% and PowerSGD is 25% behind; the second timings reverse none and fp16
    timings = {"none": [20.0, 18.0], "fp16": [19.5, 19.9], "powersgd": [15.0]}
    calls = []

    def measure(overrides, steps, controller):
        comp = overrides[0].split("=")[1]
        calls.append(comp)
        rate = timings[comp][sum(c == comp for c in calls) - 1]  # a third timing of anything raises IndexError
        return [{"img_s": rate / 2, "wire_mb_per_step": 1.0, "controller": controller}] * 2
    doc = tune.tune_hosts(measure, steps=2)
    assert calls == ["none", "fp16", "powersgd", "fp16", "none"]
    assert doc["horovod"]["compression"] == "fp16"  # mean 19.7 against 19.0
    got = {c["compression"]: (c["img_s"], c["timings"]) for c in doc["candidates"]}
    assert got == {"none": (19.0, [20.0, 18.0]), "fp16": (19.7, [19.5, 19.9]), "powersgd": (15.0, [15.0])}
    assert doc["why"][-1] == ("timed twice, being within 5% of the fastest at first (means above): "
                              "none 20.00 then 18.00; fp16 19.50 then 19.90")
    # far apart (a slow link): each candidate once
    calls.clear()
    timings.update(none=[5.0], fp16=[9.0], powersgd=[18.0])
    assert tune.tune_hosts(measure, steps=2)["horovod"]["compression"] == "powersgd"
    assert calls == ["none", "fp16", "powersgd"]


def test_controllers_are_checked_before_anything_runs():
    both = {"mpi": True, "gloo": True}
    gloo_only = {"mpi": False, "gloo": True}  # a pip-installed Horovod without MPI
    assert allreduce.controllers(None, both) == ("mpi", "gloo")
    assert allreduce.controllers(None, gloo_only) == ("gloo",)
    assert allreduce.controllers("gloo, mpi", both) == ("gloo", "mpi")
    for bad in ("nccl", "", "mpi,ddl"):
        with pytest.raises(SystemExit, match="--controllers takes mpi and/or gloo"):
            allreduce.controllers(bad, both)
    with pytest.raises(SystemExit, match=r"built without the mpi controller \(it has: gloo\)"):
        allreduce.controllers("mpi,gloo", gloo_only)
