import pytest

from hvdfast import config, tuned
from hvdfast.config import ConfigError

from conftest import ROOT

RECIPES = sorted((ROOT / "launch/configs").glob("*.yaml"))


def test_recipes_exist_and_load():
    names = {p.stem for p in RECIPES}
    assert {"digits-cpu", "mnist-cpu", "imagenet-rn50-sgd", "imagenet-rn50-lars-3200",
            "imagenet-rn50-lars-40k"} <= names
    for p in RECIPES:
        cfg = config.load(p)
        assert cfg.train.run_dir  # {config} resolved or explicit
        assert "{config}" not in cfg.train.run_dir


def test_imagenet_recipes_cite_the_run_they_follow():
    """Each ImageNet recipe names its published run and the accuracy it reported (the LR schedules themselves
    are checked against those sources in test_schedule.py)."""
    for p in RECIPES:
        if p.stem.startswith("imagenet-"):
            header = "".join(line for line in p.read_text().splitlines(keepends=True) if line.startswith("#"))
            assert "Reported:" in header and ("MLPerf" in header or "Goyal" in header), p.name


def test_overrides_are_parsed_as_yaml():
    cfg = config.load(None, ["optim.lr=0.25", "data.crop_scale=[0.35, 1]", "data.flip=false",
                             "train.run_dir=/tmp/x"])
    assert cfg.optim.lr == 0.25 and cfg.data.crop_scale == (0.35, 1) and cfg.data.flip is False
    assert cfg.train.run_dir == "/tmp/x"


def test_unknown_key_names_the_closest_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*Did you mean 'optim.lr'"):
        config.load(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config section 'horovd'.*'horovod'"):
        config.from_dict({"horovd": {}})


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match=r"'data.batch_size' must be int, got 'big'"):
        config.load(None, ["data.batch_size=big"])
    with pytest.raises(ConfigError, match=r"'train.epochs' must be float"):
        config.load(None, ["train.epochs=true"])
    with pytest.raises(ConfigError, match=r"'data.batch_size' must be int, got 3.5"):
        config.load(None, ["data.batch_size=3.5"])


def test_choices_and_ranges():
    with pytest.raises(ConfigError, match=r"'horovod.compression' must be one of none, fp16, bf16.*'fp16'"):
        config.load(None, ["horovod.compression=fp61"])
    with pytest.raises(ConfigError, match=r"must be > 0"):
        config.load(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"crop_scale"):
        config.load(None, ["data.crop_scale=[0.9, 0.1]"])
    with pytest.raises(ConfigError, match=r"'data.hw_decoder_load' must be in \[0, 1\], got 1.5"):
        config.load(None, ["data.hw_decoder_load=1.5"])
    assert config.load(None, ["data.hw_decoder_load=1"]).data.hw_decoder_load == 1.0  # an int is the float
    with pytest.raises(ConfigError, match=r"'optim.momentum' must be in \[0, 1\), got 1.5"):
        config.load(None, ["optim.momentum=1.5"])
    for seed in ("-1", str(2 ** 32)):  # numpy's seed takes [0, 2**32): a ValueError in setup before
        with pytest.raises(ConfigError, match=rf"'train.seed' must be in \[0, 2\*\*32\), got {seed}"):
            config.load(None, [f"train.seed={seed}"])
    assert config.load(None, ["train.seed=4294967295"]).train.seed == 2 ** 32 - 1
    for target in ("150", "-1"):
        with pytest.raises(ConfigError, match=rf"'train.target_top1' must be a percentage in \[0, 100\] \(0 = off\), "
                                              rf"got {float(target)}"):
            config.load(None, [f"train.target_top1={target}"])
    assert config.load(None, ["train.target_top1=100"]).train.target_top1 == 100.0
    with pytest.raises(ConfigError, match=r"'data.workers' must be -1 \(the cores the worker owns\) or >= 0"):
        config.load(None, ["data.workers=-2"])


def test_yaml_that_is_not_a_mapping(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        config.load(p)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")


def test_dump_round_trips(tmp_path):
    cfg = config.load(ROOT / "launch/configs/digits-cpu.yaml", ["optim.lr=0.3"])
    p = tmp_path / "c.yaml"
    p.write_text(config.dump(cfg))
    assert config.load(p) == cfg


def test_powersgd_needs_gradient_buckets_and_a_positive_rank():
    with pytest.raises(ConfigError, match=r"powersgd compresses gradient buckets: set horovod.bucket_mb"):
        config.load(None, ["horovod.compression=powersgd"])
    with pytest.raises(ConfigError, match=r"op=adasum does not average"):
        config.load(None, ["horovod.compression=powersgd", "horovod.op=adasum"])
    with pytest.raises(ConfigError, match=r"'horovod.powersgd_rank' must be > 0"):
        config.load(None, ["horovod.compression=powersgd", "horovod.bucket_mb=2", "horovod.powersgd_rank=0"])
    cfg = config.load(None, ["horovod.compression=powersgd", "horovod.bucket_mb=2", "horovod.powersgd_rank=2"])
    assert cfg.horovod.powersgd_rank == 2


def test_every_key_says_what_it_means():
    """`hvdfast train --keys` reads each key's meaning from the comment beside its field in config.py: a key added
    without one would be listed with nothing under it."""
    docs = config.describe()
    assert set(docs) == set(config.to_flat(config.Config()))
    assert [k for k, text in docs.items() if len(text) < 10] == []
    # the comment lines under a field belong to it, and only to it
    assert docs["horovod.mpi_allreduce"].startswith("Open MPI's allreduce algorithm") and \
        docs["horovod.mpi_allreduce"].endswith("log2(ranks) x the bytes of a ring")
    assert docs["train.epochs"] == "passes over the training set (fractions allowed)"


def test_keys_name_where_each_value_came_from(tmp_path):
    tuned_file = tmp_path / "tuned.yaml"
    tuned_file.write_text("horovod: {compression: bf16, bucket_mb: 12, cycle_time_ms: 20}\n")
    over = ["horovod.compression=fp16", f"horovod.tuned={tuned_file}"]
    cfg, _ = tuned.load_config("launch/configs/digits-cpu.yaml", over)
    where = tuned.origins("launch/configs/digits-cpu.yaml", over, cfg)
    assert (where["horovod.compression"], where["horovod.bucket_mb"], where["horovod.tuned"]) == \
        ("override", "tuned file", "override")
    # the recipe's 20 ms, which the tuned file repeats, stays the recipe's; a key nobody set is a default
    assert (where["horovod.cycle_time_ms"], where["optim.name"], where["horovod.powersgd_rank"]) == \
        ("recipe", "recipe", "default")
    text = config.explain(cfg, where, "bucket")
    assert text.splitlines()[0] == "horovod.bucket_mb=12.0  (tuned file)"
    assert [line.split("=")[0] for line in text.splitlines() if not line.startswith(" ")] == \
        ["horovod.bucket_mb", "horovod.last_bucket_mb"]
    # no key named so: the keys whose description says it
    assert [line.split("=")[0] for line in config.explain(cfg, where, "nvjpeg").splitlines()
            if not line.startswith(" ")] == ["data.hw_decoder_load"]
    with pytest.raises(config.ConfigError, match="overrides go before --keys"):
        config.explain(cfg, where, "optim.lr=0.2")


def test_a_validation_resize_below_the_crop_is_refused():
    with pytest.raises(config.ConfigError, match=r"data.val_resize=32 is smaller than data.image_size=40"):
        config.load(None, ["data.image_size=40", "data.val_resize=32"])
    # synthetic images are made at image_size: val_resize plays no part
    cfg = config.load(None, ["data.image_size=224", "data.val_resize=32", "data.backend=synthetic"])
    assert (cfg.data.image_size, cfg.data.val_resize) == (224, 32)
