"""`hvdfast tune --hosts`' choice among wire formats, from measured throughputs (the measuring itself runs in
test_bench_cluster through the emulated hosts)."""
import pytest

from conftest import ROOT
from hvdfast import dist, tune, tuned
from hvdfast.bench import allreduce


def pick(img_s: dict, controllers=("mpi",)) -> dict:
    """img_s: by compression, or by (path, compression) where a path (the controller, and under MPI Open MPI's
    algorithm: "mpi", "mpi (recursive_doubling)", "gloo") differs; a forced algorithm not given runs as "mpi"."""
    def measure(overrides, steps, controller, compressions):
        algo = next(o.split("=")[1] for o in overrides if o.startswith("horovod.mpi_allreduce="))
        # every format measured with the buckets and cycle it would keep, in one launch per transport
        assert {"horovod.cycle_time_ms=5", "horovod.bucket_mb=25"} <= set(overrides)
        assert set(compressions) <= {"none", "fp16", "powersgd"}
        assert controller == "mpi" or algo == "auto"   # Open MPI's algorithm only matters under MPI
        path = controller + ("" if algo == "auto" else f" ({algo})")
        return {comp: [{"img_s": (img_s.get((path, comp)) or img_s.get((controller, comp)) or img_s[comp]) / 2,
                        "wire_mb_per_step": 1.0, "controller": controller}] * 2 for comp in compressions}
    return tune.tune_hosts(measure, steps=2, controllers=controllers)


def test_powersgd_is_chosen_only_when_clearly_faster_than_sending_whole_gradients():
    # a fast link: PowerSGD 3% faster than uncompressed is not worth its approximation
    doc = pick({"none": 20.0, "fp16": 19.0, "powersgd": 20.6})
    assert doc["horovod"] == {"compression": "none", "bucket_mb": 25.0, "op": "prescaled", "cycle_time_ms": 5.0,
                              "mpi_allreduce": "auto"}
    # a slow link: PowerSGD 2x faster wins (it needs gradient buckets, which every candidate uses)
    doc = pick({"none": 5.0, "fp16": 9.0, "powersgd": 18.0})
    assert doc["horovod"] == {"compression": "powersgd", "bucket_mb": 25.0, "op": "prescaled", "cycle_time_ms": 5.0,
                              "mpi_allreduce": "auto"}
    assert doc["why"][0].startswith("fastest across the hosts: controller mpi, compression powersgd")
    assert doc["launcher"]["controller"] == "mpi"
    # fp16 (rounded, but the whole gradient) needs no margin against none
    assert pick({"none": 10.0, "fp16": 10.2, "powersgd": 10.5})["horovod"]["compression"] == "fp16"


def test_the_controller_is_chosen_with_the_wire_format():
    both = ("mpi", "gloo")
    # uncompressed over Gloo beats MPI's fp16, and PowerSGD is not 5% ahead of it: Gloo + none
    doc = pick({("mpi", "none"): 8.0, ("mpi", "fp16"): 14.0, ("mpi", "powersgd"): 14.5,
                ("gloo", "none"): 14.2, ("gloo", "fp16"): 13.0, ("gloo", "powersgd"): 14.9}, both)
    assert doc["launcher"]["controller"] == "gloo" and doc["horovod"]["compression"] == "none"
    assert [(c["controller"], c["mpi_allreduce"], c["compression"]) for c in doc["candidates"]] == [
        (ctl, algo, comp) for ctl, algo in (("mpi", "auto"), ("mpi", "recursive_doubling"), ("gloo", "auto"))
        for comp in ("none", "fp16", "powersgd")]
    assert doc["why"][0].startswith("fastest across the hosts: controller gloo, compression none")
    assert "mpi + powersgd: 14.50 img/s" in doc["why"][3]
    assert "mpi (recursive_doubling) + powersgd: 14.50 img/s" in doc["why"][6]
    # PowerSGD's margin is against the best whole-gradient format on either controller
    doc = pick({("mpi", "none"): 8.0, ("mpi", "fp16"): 14.0, ("mpi", "powersgd"): 15.0,
                ("gloo", "none"): 10.0, ("gloo", "fp16"): 9.0, ("gloo", "powersgd"): 21.0}, both)
    assert (doc["launcher"]["controller"], doc["horovod"]["compression"]) == ("gloo", "powersgd")


def test_candidates_timed_beside_a_floor_are_ranked_against_it():
    # fp16 was timed while the machine ran at half speed (its floor too): 9 img/s against a floor of 10 is 0.9,
    # ahead of none's 12 against 16 (0.75) although slower in img/s; PowerSGD's 0.93 is not 5% ahead of 0.9
    measured = {"none": (12.0, 16.0), "fp16": (9.0, 10.0), "powersgd": (15.0, 16.2)}

    def measure(overrides, steps, controller, compressions):
        return {c: [{"img_s": measured[c][0] / 2, "floor_img_s": measured[c][1] / 2, "wire_mb_per_step": 1.0,
                     "controller": controller}] * 2 for c in compressions}
    doc = tune.tune_hosts(measure, steps=2)
    assert doc["horovod"]["compression"] == "fp16"
    got = {(c["mpi_allreduce"], c["compression"]): (c["img_s"], c["vs_floor"], c["scores"])
           for c in doc["candidates"]}
    assert got[("auto", "fp16")] == (9.0, 0.9, [0.9, 0.9])  # within 5% of PowerSGD's 0.926: timed again
    assert got[("auto", "none")] == (12.0, 0.75, [0.75])
    assert doc["why"][0] == ("fastest across the hosts (img/s against the floor timed beside each): controller mpi, "
                             "compression fp16 with 25 MiB buckets, 9.00 img/s, 0.900 of the floor beside it "
                             "(1.0 MB sent per step per worker)")
    assert "of the floor" in doc["why"][-1] and doc["why"][-1].startswith("timed twice")


def test_close_candidates_are_timed_again_in_reverse_and_chosen_by_their_mean():
    # first pass: none leads fp16 by 2.5% and the rest are 15-25% behind; the second timings reverse none and fp16
    timings = {"none": [20.0, 18.0], "fp16": [19.5, 19.9], "powersgd": [15.0],
               "rd none": [16.0], "rd fp16": [17.0], "rd powersgd": [14.0]}
    calls = []

    def measure(overrides, steps, controller, compressions):
        rd = "rd " if "horovod.mpi_allreduce=recursive_doubling" in overrides else ""
        calls.append([rd + comp for comp in compressions])  # one launch: its formats in the order timed
        done = [k for launch in calls for k in launch]
        # a third timing of anything raises IndexError
        return {comp: [{"img_s": timings[rd + comp][done.count(rd + comp) - 1] / 2, "wire_mb_per_step": 1.0,
                        "controller": controller}] * 2 for comp in compressions}
    doc = tune.tune_hosts(measure, steps=2)
    assert calls == [["none", "fp16", "powersgd"], ["rd none", "rd fp16", "rd powersgd"], ["fp16", "none"]]
    assert doc["launches"] == 3 and doc["why"][-2].startswith(
        "measured in 3 launches (2 transports, every format in turn in each, then the close ones again), ")
    assert doc["horovod"]["compression"] == "fp16" and doc["horovod"]["mpi_allreduce"] == "auto"  # 19.7 vs 19.0
    got = {(c["mpi_allreduce"], c["compression"]): (c["img_s"], c["timings"]) for c in doc["candidates"]}
    assert got == {("auto", "none"): (19.0, [20.0, 18.0]), ("auto", "fp16"): (19.7, [19.5, 19.9]),
                   ("auto", "powersgd"): (15.0, [15.0]), ("recursive_doubling", "none"): (16.0, [16.0]),
                   ("recursive_doubling", "fp16"): (17.0, [17.0]), ("recursive_doubling", "powersgd"): (14.0, [14.0])}
    assert doc["why"][-1] == ("timed twice, being within 5% of the fastest at first (means above): "
                              "mpi + none 20.00 then 18.00; mpi + fp16 19.50 then 19.90")
    # far apart (a slow link): each candidate once
    calls.clear()
    timings.update({"none": [5.0], "fp16": [9.0], "powersgd": [18.0], "rd none": [6.0], "rd fp16": [10.0],
                    "rd powersgd": [17.0]})
    doc = tune.tune_hosts(measure, steps=2)
    assert doc["horovod"]["compression"] == "powersgd"
    assert calls == [["none", "fp16", "powersgd"], ["rd none", "rd fp16", "rd powersgd"]]
    assert doc["launches"] == 2 and doc["why"][-1].startswith(
        "measured in 2 launches (2 transports, every format in turn in each), ")


def test_open_mpis_algorithm_is_chosen_with_the_wire_format_and_applied_from_the_file(tmp_path):
    # uncompressed with recursive doubling beats Open MPI's choice for every format: kept in the file
    doc = pick({("mpi", "none"): 9.0, ("mpi", "fp16"): 11.0, ("mpi", "powersgd"): 11.2,
                ("mpi (recursive_doubling)", "none"): 10.0, ("mpi (recursive_doubling)", "fp16"): 12.0,
                ("mpi (recursive_doubling)", "powersgd"): 12.5})
    assert (doc["horovod"]["mpi_allreduce"], doc["horovod"]["compression"]) == ("recursive_doubling", "fp16")
    assert doc["launcher"]["controller"] == "mpi"
    assert doc["why"][0].startswith("fastest across the hosts: controller mpi (recursive_doubling), compression fp16")
    f = tmp_path / "tuned.yaml"
    tune.save(doc, f)
    cfg, notes = tuned.load_config(ROOT / "launch/configs/digits-cpu.yaml", [f"horovod.tuned={f}"])
    assert cfg.horovod.mpi_allreduce == "recursive_doubling" and notes == []
    assert dist.horovod_env(cfg.horovod)["OMPI_MCA_coll_tuned_allreduce_algorithm"] == "recursive_doubling"
    # a setting on the command line wins over the file's
    cfg, _ = tuned.load_config(ROOT / "launch/configs/digits-cpu.yaml",
                               [f"horovod.tuned={f}", "horovod.mpi_allreduce=auto"])
    assert cfg.horovod.mpi_allreduce == "auto" and "OMPI_MCA_coll_tuned_allreduce_algorithm" not in \
        dist.horovod_env(cfg.horovod)


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
