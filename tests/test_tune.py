import re

import pytest
import yaml

from hvdfast import config, knobs, tune, tuned
from hvdfast.config import ConfigError


def row(ctl, fus, cyc, comp, ms):
    return {"controller": ctl, "fusion_mb": fus, "cycle_ms": cyc, "compression": comp, "ms": ms}


def test_choose_picks_the_fastest_and_explains_the_alternatives():
    rows = [row("gloo", 64, 1, "none", 168), row("gloo", 64, 1, "fp16", 800), row("mpi", 0, 1, "none", 32),
            row("mpi", 0, 1, "fp16", 27), row("mpi", 64, 1, "fp16", 60)]
    best, why = tune.choose(rows)
    assert (best["controller"], best["fusion_mb"], best["compression"]) == ("mpi", 0, "fp16")
    assert "gloo at its best (none, fusion 64): 168.0 ms (6.2x slower)" in why[1]
    assert any(line.startswith("compression none on mpi: 32.0 ms") for line in why)


def test_tuned_file_sits_between_recipe_and_overrides(tmp_path, monkeypatch):
    f = tmp_path / "tuned.yaml"
    f.write_text(yaml.safe_dump({"horovod": {"fusion_threshold_mb": 0.0, "cycle_time_ms": 5.0,
                                             "compression": "fp16"}, "launcher": {"controller": "mpi"}}))
    monkeypatch.setenv("HVDFAST_TUNED", str(f))
    cfg, notes = tuned.load_config(None, ["horovod.cycle_time_ms=2"])
    assert cfg.horovod.fusion_threshold_mb == 0.0 and cfg.horovod.compression == "fp16" and notes == []
    assert cfg.horovod.cycle_time_ms == 2.0                     # the command line wins
    off, _ = tuned.load_config(None, ["horovod.tuned=never"])
    assert off.horovod.compression == "none" and off.horovod.fusion_threshold_mb == 64.0
    assert config.load(None).horovod.compression == "none"      # config.load: the user's settings alone
    with pytest.raises(ConfigError, match="not a file written by 'hvdfast tune'"):
        tuned.load_config(None, [f"horovod.tuned={tmp_path / 'missing.yaml'}"])


def test_horovods_own_variables_sit_between_the_tuned_file_and_overrides(tmp_path, monkeypatch):
    """HOROVOD_FUSION_THRESHOLD, HOROVOD_CYCLE_TIME and HOROVOD_STALL_CHECK_TIME_SECONDS (an export in a batch script,
    horovodrun's --fusion-threshold-mb / --cycle-time-ms) were overwritten by the recipe's values in every worker
    without a word; now they outrank the recipe and the tuned file, give way to the command line, and say so."""
    f = tmp_path / "tuned.yaml"
    f.write_text(yaml.safe_dump({"horovod": {"cycle_time_ms": 2.0, "compression": "fp16"}}))
    monkeypatch.setenv("HVDFAST_TUNED", str(f))
    recipe = "launch/configs/digits-cpu.yaml"
    env = {"HOROVOD_CYCLE_TIME": "5", "HOROVOD_FUSION_THRESHOLD": str(4 * 1024 * 1024)}  # horovodrun's own forms
    cfg, notes = tuned.load_config(recipe, [], environ=env)
    assert (cfg.horovod.cycle_time_ms, cfg.horovod.fusion_threshold_mb, cfg.horovod.compression) == (5.0, 4.0, "fp16")
    assert notes == [f"horovod.{k}={v} from {var}={env[var]} in the environment (Horovod's own knob; it outranks "
                     f"the recipe and the tuned file, not the command line)"
                     for k, v, var in (("fusion_threshold_mb", 4, "HOROVOD_FUSION_THRESHOLD"),
                                       ("cycle_time_ms", 5, "HOROVOD_CYCLE_TIME"))]
    where = tuned.origins(recipe, [], cfg, environ=env)
    assert (where["horovod.cycle_time_ms"], where["horovod.fusion_threshold_mb"], where["horovod.compression"]) == \
        ("environment", "environment", "tuned file")
    cfg, notes = tuned.load_config(recipe, ["horovod.cycle_time_ms=7"], environ=env)
    assert cfg.horovod.cycle_time_ms == 7.0 and cfg.horovod.fusion_threshold_mb == 4.0
    assert notes[1] == "HOROVOD_CYCLE_TIME=5 in the environment gives way to the command line's " \
                       "horovod.cycle_time_ms=7.0"
    # what `hvdfast launch` exports to its workers is the config's own values (fusion capped by the buckets): no
    # change and no note
    plain, _ = tuned.load_config(recipe, [], environ={})
    exported = knobs.horovod_env(plain.horovod)
    assert exported["HOROVOD_FUSION_THRESHOLD"] != str(int(plain.horovod.fusion_threshold_mb * 1024 * 1024))
    assert tuned.load_config(recipe, [], environ=exported) == (plain, [])
    for text, says in (("x", "HOROVOD_CYCLE_TIME='x' in the environment is not a number"),
                       ("-3", "HOROVOD_CYCLE_TIME=-3 in the environment: config key 'horovod.cycle_time_ms' must be "
                              "> 0, got -3.0.")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            tuned.load_config(recipe, [], environ={"HOROVOD_CYCLE_TIME": text})


def test_no_tuned_file_means_the_recipe_alone():
    cfg, notes = tuned.load_config(None)
    assert cfg.horovod.compression == "none" and cfg.horovod.tuned == "auto" and notes == []


def test_malloc_mode_is_explained_and_becomes_launcher_environment():
    rows = [dict(row("mpi", 2, 1, "none", 26.5), malloc="hugepages"),
            dict(row("mpi", 8, 1, "none", 32.3), malloc="default")]
    best, why = tune.choose(rows)
    assert best["malloc"] == "hugepages"
    assert "malloc hugepages" in why[0] and any(w.startswith("malloc default on mpi: 32.3 ms") for w in why)
    from hvdfast.bench.allreduce import malloc_env
    assert malloc_env({}, "default") == {}
    assert malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "hugepages") == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert tuned.launcher_env({"launcher": {"env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}}) == {
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert tuned.launcher_env(None) == {}


def test_sum_on_the_wire_becomes_the_prescaled_training_op(tmp_path, monkeypatch):
    rows = [dict(row("mpi", 2, 1, "none", 34.3), op="average"), dict(row("mpi", 2, 1, "none", 26.4), op="sum")]
    best, why = tune.choose(rows)
    assert best["op"] == "sum" and "op prescaled, one allreduce per gradient: 26.4 ms" in why[0]
    assert any(w.startswith("op average on mpi: 34.3 ms at its best (1.30x)") for w in why)
    f = tmp_path / "tuned.yaml"
    f.write_text(yaml.safe_dump({"horovod": {"op": tune.TRAINING_OP[best["op"]]}}))
    monkeypatch.setenv("HVDFAST_TUNED", str(f))
    assert tuned.load_config(None)[0].horovod.op == "prescaled"
    assert tuned.load_config(None, ["horovod.op=average"])[0].horovod.op == "average"   # the command line wins
    assert tuned.load_config(None, ["horovod.op=adasum"])[0].horovod.op == "adasum"
    recipe = tmp_path / "adasum.yaml"
    recipe.write_text("horovod:\n  op: adasum\n")
    cfg, notes = tuned.load_config(recipe)
    assert cfg.horovod.op == "adasum"  # a different reduction, not a way to average: kept
    assert notes == ["tuned horovod.op=prescaled not applied: the recipe chose op=adasum, a different reduction "
                     "rather than a slower way to average"]
    with pytest.raises(ConfigError, match="gradient_predivide_factor applies to op=average only"):
        config.load(None, ["horovod.op=prescaled", "horovod.gradient_predivide_factor=2"])


def test_buckets_are_a_grid_dimension_and_become_horovod_bucket_mb():
    rows = [dict(row("mpi", 1, 1, "none", 27.1), op="sum", bucket_mb=0.0),
            dict(row("mpi", 1, 1, "none", 16.8), op="sum", bucket_mb=25.0)]
    best, why = tune.choose(rows)
    assert best["bucket_mb"] == 25.0 and "gradient buckets of 25 MiB: 16.8 ms" in why[0]
    assert any(w.startswith("one allreduce per gradient on mpi: 27.1 ms at its best (1.61x)") for w in why)
    with pytest.raises(ConfigError, match="does not apply to op=adasum"):
        config.load(None, ["horovod.bucket_mb=25", "horovod.op=adasum", "horovod.tuned=never"])


def test_a_tuned_setting_never_invalidates_what_the_user_chose(tmp_path, monkeypatch):
    """The file `hvdfast tune` writes (25 MiB buckets, op prescaled, PowerSGD) with op=adasum or with a predivide
    factor: the user's settings train, the tuned ones that do not fit are left out with a note; with elastic, all
    of it applies."""
    f = tmp_path / "tuned.yaml"
    f.write_text(yaml.safe_dump({"horovod": {"bucket_mb": 25.0, "op": "prescaled", "compression": "powersgd",
                                             "cycle_time_ms": 3.0}, "launcher": {"controller": "gloo"}}))
    monkeypatch.setenv("HVDFAST_TUNED", str(f))
    cfg, notes = tuned.load_config(None, ["horovod.op=adasum"])
    assert (cfg.horovod.op, cfg.horovod.bucket_mb, cfg.horovod.cycle_time_ms) == ("adasum", 0.0, 3.0)
    assert [n.split(":")[0] for n in notes] == ["tuned horovod.bucket_mb=25.0 not applied",
                                                "tuned horovod.compression=powersgd not applied"]
    cfg, notes = tuned.load_config(None, ["horovod.gradient_predivide_factor=2"])
    assert (cfg.horovod.op, cfg.horovod.bucket_mb, cfg.horovod.compression) == ("average", 25.0, "powersgd")
    assert [n.split(":")[0] for n in notes] == ["tuned horovod.op=prescaled not applied"]
    cfg, notes = tuned.load_config(None, ["train.elastic=true"])  # buckets and PowerSGD work there too
    assert (cfg.horovod.op, cfg.horovod.bucket_mb, cfg.horovod.compression) == ("prescaled", 25.0, "powersgd")
    assert notes == []


def test_launch_takes_the_controller_from_the_tuned_file_the_config_uses(tmp_path, monkeypatch):
    import argparse
    from hvdfast.launch import job
    default, other = tmp_path / "default.yaml", tmp_path / "other.yaml"
    default.write_text(yaml.safe_dump({"launcher": {"controller": "gloo"}}))
    other.write_text(yaml.safe_dump({"launcher": {"controller": "mpi"}}))
    monkeypatch.setenv("HVDFAST_TUNED", str(default))

    def controller(*overrides):
        args = argparse.Namespace(config=None, overrides=list(overrides), controller="auto")
        return job.controller(args)
    assert controller() == "gloo"
    assert controller("horovod.tuned=never") == "mpi"          # Horovod's default, not the default file's
    assert controller(f"horovod.tuned={other}") == "mpi"
