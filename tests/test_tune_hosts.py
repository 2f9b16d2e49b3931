"""`hvdfast tune --hosts`' choice among wire formats, from measured throughputs (the measuring itself runs in
test_bench_cluster through the emulated hosts)."""
from hvdfast import tune


def pick(img_s: dict) -> dict:
    def measure(overrides, steps):
        comp = overrides[0].split("=")[1]
        assert "horovod.cycle_time_ms=5" in overrides  # every candidate measured with the cycle it would keep
        return [{"img_s": img_s[comp] / 2, "wire_mb_per_step": 1.0, "controller": "mpi"}] * 2
    return tune.tune_hosts(measure, steps=2)


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
