"""Run configuration: frozen dataclasses with units, YAML recipes, dotted overrides, strict validation.

A recipe is a YAML mapping of sections (data, model, optim, horovod, train). Overrides are `section.key=value`
strings whose value is parsed as YAML (`optim.lr=0.2`, `data.crop_scale=[0.35,1]`). Unknown keys and wrong types
raise ConfigError with the nearest valid key, so a typo never silently trains with a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A configuration mistake the user can fix; the message says how."""


@dataclass(frozen=True)
class DataConfig:
    backend: str = "auto"             # dali | torchvision | synthetic | auto (dali where it imports, else torchvision)
    dir: str = "data/digits"          # ImageFolder root holding train/<class>/*.jpg and val/<class>/*.jpg
    image_size: int = 224             # px, side of the square training and validation crop
    val_resize: int = 256             # px, shorter side before the validation center crop
    batch_size: int = 256             # images per worker per backward pass
    crop_scale: tuple = (0.08, 1.0)   # fraction of image area kept by the random-resized training crop
    flip: bool = True                 # random horizontal flip (off for digits: a mirrored 2 is not a 2)
    workers: int = -1                 # decode threads / loader processes per worker; -1 = the cores it owns
    hw_decoder_load: float = 0.65     # GPU decode (DALI "mixed"): share of the JPEGs sent to the GPU's hardware
                                      # JPEG decoder (A100, H100), the rest to nvJPEG on the SMs that also train;
                                      # DALI's default, "found empirically" per its docs; ignored on CPU
    skip_corrupt: bool = False        # skip (and count) undecodable files instead of stopping the run
    synthetic_classes: int = 1000     # classes of the synthetic backend
    synthetic_images: int = 2048      # images per epoch (all workers) of the synthetic backend


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet50"            # any torchvision classification model
    zero_init_residual: bool = True   # zero-init the last BN gamma of each residual block (Goyal et al. 2017)
    channels_last: bool = True        # NHWC memory format (faster convolutions with AMP and on CPU with bf16)
    compile: bool = False             # torch.compile the forward+backward (GPU: fuses BN/ReLU/add; minutes to build)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"                 # sgd | lars | lamb
    lr: float = 0.1                   # peak LR at a global batch of lr_batch images; scaled to the run's global
                                      # batch by lr_scaling
    lr_batch: int = 256               # images per optimizer step that optim.lr is stated for
    lr_scaling: str = "linear"        # linear: lr x batch / lr_batch (Goyal et al. 2017) | sqrt: lr x sqrt(batch
                                      # / lr_batch) (Hoffer et al. 2017; LAMB, You et al. 2019) | none: lr as given
                                      # at any batch (a LARS recipe tuned at its own batch: MLPerf)
    momentum: float = 0.9             # SGD and LARS momentum (LAMB keeps timm's betas, 0.9 and 0.999)
    nesterov: bool = False            # Nesterov momentum (SGD and LARS)
    weight_decay: float = 5e-5        # applied to conv/linear weights only (no decay for ndim <= 1)
    trust_coeff: float = 0.001        # LARS trust coefficient (eta)
    warmup_epochs: float = 0.0        # linear warmup from warmup_from to the scaled lr, in epochs
    warmup_from: float = 0.0          # LR (absolute) the warmup ramps up from; Goyal et al. start at the 256-image
                                      # LR (0.1), MLPerf's LARS at 0
    schedule: str = "cosine"          # cosine | poly | step | constant (after warmup)
    poly_power: float = 2.0           # exponent of the poly schedule
    end_lr: float = 0.0               # LR (absolute) that cosine and poly decay to at the last step (MLPerf: 1e-4)
    step_epochs: tuple = (30, 60, 80)  # epochs at which the step schedule multiplies lr by step_gamma
    step_gamma: float = 0.1           # factor of the step schedule at each of step_epochs
    label_smoothing: float = 0.0      # fraction of the target mass spread over all classes
    clip_grad_norm: float = 0.0       # max global gradient L2 norm; 0 = no clipping


@dataclass(frozen=True)
class HorovodConfig:
    compression: str = "none"         # none | fp16 | bf16 (gradient wire format) | powersgd (rank-r factors with
                                      # error feedback, hvdfast/dist/powersgd.py; needs bucket_mb > 0)
    powersgd_rank: int = 4            # rank r of compression=powersgd: each weight n x m sends (n + m) r numbers
    fusion_threshold_mb: float = 64.0  # MiB; tensor fusion buffer (HOROVOD_FUSION_THRESHOLD); 0 = no fusion
    cycle_time_ms: float = 1.0        # ms between Horovod background cycles (HOROVOD_CYCLE_TIME)
    idle_wait_ms: float = 100.0       # ms: while nothing is queued on its rank, Horovod's background thread waits
                                      # for the next enqueue (at most this long) instead of a coordination
                                      # round every cycle (hvdfast's build patch, launch/install.sh); 0 = every
                                      # cycle, as stock Horovod
    backward_passes_per_step: int = 1  # local gradient accumulation before each allreduce
    bucket_mb: float = 0.0            # MiB; > 0: gradients live in flat buckets of about this size, each one
                                      # allreduced as a single tensor when its last gradient is ready (no fusion
                                      # copies, few calls; hvdfast/dist/buckets.py); 0: Horovod's per-tensor hooks.
                                      # With buckets the fusion threshold is capped at bucket_mb / 2
    last_bucket_mb: float = 0.0       # MiB; with buckets, > 0: the gradients backward produces last (the first
                                      # layers') get a bucket of their own of at most this size, so little is left to
                                      # send once backward ends (ResNet-50: 1 MiB instead of 8.3); 0: the last bucket
                                      # is what the others leave (no faster on one-core emulated hosts: README)
    gradient_predivide_factor: float = 1.0  # divide before the sum and after it (average only)
    op: str = "average"               # average | prescaled | adasum. prescaled: the same average, with the 1/N
                                      # taken on the loss before backward and a plain Sum on the wire (saves
                                      # Horovod's separate scaling pass over the reduced gradients)
    timeline: str = ""                # path of a Horovod timeline JSON file (HOROVOD_TIMELINE); "" = off
    stall_check_warning_s: int = 60   # seconds before Horovod warns that ranks wait on a tensor
    stall_check_shutdown_s: int = 0   # seconds before Horovod shuts a stalled job down; 0 = never
    autotune: bool = False            # Horovod's Bayesian autotuning of fusion / cycle time
    autotune_log: str = ""            # CSV written by Horovod's autotuner; "" = none
    tuned: str = "auto"               # auto: apply `hvdfast tune`'s file if it exists | never | its path
    hierarchical_allreduce: bool = False  # HOROVOD_HIERARCHICAL_ALLREDUCE: NCCL inside each node, MPI between
                                          # nodes (GPU tensors with NCCL + MPI only; Horovod 0.28.1 has no
                                          # hierarchical path for CPU tensors, so on CPU this changes nothing)
    mpi_yield_when_idle: bool = False  # Open MPI ranks sleep instead of spinning while they wait: faster when
                                       # ranks share few cores (CPU training), slower on GPU nodes
    mpi_allreduce: str = "auto"       # Open MPI's allreduce algorithm (coll/tuned, for every buffer size): auto
                                      # (Open MPI's choice by size) | recursive_doubling | ring | segmented_ring |
                                      # rabenseifner | nonoverlapping | basic_linear. 2 ranks over TCP: Open MPI's
                                      # choice for large buffers (rabenseifner) took 2x the wire time of the bytes,
                                      # recursive_doubling 1x (README, "Across hosts"); beyond 2 ranks recursive
                                      # doubling sends log2(ranks) x the bytes of a ring


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 90.0              # passes over the training set (fractions allowed)
    precision: str = "auto"           # auto (fp16 AMP on GPU; bf16 autocast on a CPU with native bf16, else fp32) |
                                      # fp32 | fp16 (with a loss scaler; emulated on most CPUs) | bf16
    seed: int = 0                     # seeds model init, data order and augmentation
    deterministic: bool = False       # deterministic kernels and no Horovod tensor fusion (slower); for bit-exact
                                      # repeatability at any world size and horovod.op
    log_every: int = 20               # optimizer steps between logged (cross-rank averaged) metrics
    eval_every: int = 1               # epochs between validations (the last epoch always validates)
    target_top1: float = 0.0          # report time to this validation top-1 (percent); 0 = off
    run_dir: str = "runs/{config}"    # output folder; {config} is the recipe's file name without .yaml
    resume: str = "auto"              # auto (newest checkpoint in run_dir) | never | path of a checkpoint
    checkpoint_every: int = 1         # epochs between checkpoints; 0 = only at the end
    checkpoint_every_steps: int = 0   # also checkpoint every N optimizer steps (mid-epoch); 0 = off
    keep_checkpoints: int = 2         # newest checkpoints kept
    keep_best: bool = True            # the weights of the best validation top-1 in RUN_DIR/best.pt (with the class
                                      # names; written with the next checkpoint)
    progress: str = "auto"            # auto (bar on a TTY, lines otherwise) | bar | lines
    gc_every: int = 50                # optimizer steps between Python garbage collections, at the same step on
                                      # every rank (automatic collection is off while training); 0 = Python's own
    threads: int = 0                  # torch threads per worker; 0 = the cores it owns (affinity / local ranks)
    elastic: bool = False             # Horovod elastic training (horovodrun --min-np/--max-np/--host-discovery-script)
    hang_timeout_s: float = 600.0     # seconds without progress before every rank dumps its stack and rank 0
                                      # names the rank that is behind; 0 = off
    max_time: str = ""                # wall-time budget of this process, e.g. 23h50m, 90m, 1-00:00:00 (SLURM's
                                      # form) or seconds: checkpoint and stop (exit 75) before it; "" = none


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    horovod: HorovodConfig = field(default_factory=HorovodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


ADASUM_WITH_A_LOSS_SCALER = ("horovod.op=adasum steps the optimizer inside backward, before a loss scaler could "
                             "unscale the gradients: use train.precision=bf16 (or fp32) with adasum.")

CHOICES = {
    "data.backend": ("auto", "dali", "torchvision", "synthetic"),
    "optim.name": ("sgd", "lars", "lamb"),
    "optim.schedule": ("cosine", "poly", "step", "constant"),
    "optim.lr_scaling": ("linear", "sqrt", "none"),
    "horovod.compression": ("none", "fp16", "bf16", "powersgd"),
    "horovod.op": ("average", "prescaled", "adasum"),
    "horovod.mpi_allreduce": ("auto", "recursive_doubling", "ring", "segmented_ring", "rabenseifner",
                              "nonoverlapping", "basic_linear"),
    "train.precision": ("auto", "fp32", "fp16", "bf16"),
    "train.progress": ("auto", "bar", "lines"),
}
POSITIVE = {"data.image_size", "data.val_resize", "data.batch_size", "horovod.backward_passes_per_step",
            "train.log_every", "train.eval_every", "train.keep_checkpoints", "optim.lr", "optim.lr_batch",
            "train.epochs", "horovod.cycle_time_ms", "horovod.gradient_predivide_factor", "horovod.powersgd_rank"}
NON_NEGATIVE = {"horovod.fusion_threshold_mb", "horovod.bucket_mb", "horovod.last_bucket_mb", "optim.weight_decay",
                "optim.momentum", "optim.warmup_epochs", "optim.warmup_from", "optim.end_lr",
                "optim.clip_grad_norm", "train.checkpoint_every", "train.checkpoint_every_steps",
                "train.hang_timeout_s", "train.threads", "train.gc_every",
                "horovod.stall_check_warning_s", "horovod.idle_wait_ms",
                "horovod.stall_check_shutdown_s"}


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(sorted(options))}."


def _coerce(path: str, value: Any, hint: Any) -> Any:
    """Check `value` against the annotation `hint`; return it in the field's type or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    want = hint.__name__ if isinstance(hint, type) else str(hint)
    bad = ConfigError(f"config key '{path}' must be {want}, got {value!r} ({type(value).__name__}).")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML read a number: train.max_time=3600 (YAML 1.1 reads 1:00:00 as 3600 too)
        if not isinstance(value, str):
            raise bad
        return value
    if hint is tuple:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"config key '{path}' must be a list of numbers, got {value!r}.")
        return tuple(value)
    raise AssertionError(f"unsupported annotation {hint} for {path}")  # a programming error, not a user one


def _section_types(cls) -> dict:
    return typing.get_type_hints(cls)


def from_dict(raw: dict, source: str = "config") -> Config:
    """Build a validated Config from a nested mapping (missing keys take their defaults)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a YAML mapping of sections (data, model, optim, horovod, train), "
                          f"got {type(raw).__name__}.")
    sections = {}
    top_types = _section_types(Config)
    for sec_name, sec_val in raw.items():
        if sec_name not in top_types:
            raise ConfigError(f"unknown config section '{sec_name}' in {source}." + _suggest(sec_name, top_types))
        if sec_val is None:
            sec_val = {}
        if not isinstance(sec_val, dict):
            raise ConfigError(f"config section '{sec_name}' in {source} must be a mapping, got {sec_val!r}.")
        sections[sec_name] = sec_val
    built = {}
    for sec_name, sec_cls in top_types.items():
        hints = _section_types(sec_cls)
        values = {}
        for key, val in sections.get(sec_name, {}).items():
            path = f"{sec_name}.{key}"
            if key not in hints:
                raise ConfigError(f"unknown config key '{path}' in {source}."
                                  + _suggest(path, [f"{sec_name}.{k}" for k in hints]))
            values[key] = _coerce(path, val, hints[key])
        built[sec_name] = sec_cls(**values)
    cfg = Config(**built)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    flat = to_flat(cfg)
    for path, options in CHOICES.items():
        if flat[path] not in options:
            raise ConfigError(f"config key '{path}' must be one of {', '.join(options)}; got {flat[path]!r}."
                              + (_suggest(str(flat[path]), options) if isinstance(flat[path], str) else ""))
    for path in POSITIVE:
        if not flat[path] > 0:
            raise ConfigError(f"config key '{path}' must be > 0, got {flat[path]!r}.")
    for path in NON_NEGATIVE:
        if flat[path] < 0:
            raise ConfigError(f"config key '{path}' must be >= 0, got {flat[path]!r}.")
    lo, hi = (tuple(cfg.data.crop_scale) + (None, None))[:2]
    if len(cfg.data.crop_scale) != 2 or not (0 < lo <= hi <= 1):
        raise ConfigError(f"config key 'data.crop_scale' must be [min, max] with 0 < min <= max <= 1, "
                          f"got {list(cfg.data.crop_scale)}.")
    if cfg.horovod.compression == "powersgd" and cfg.horovod.op == "adasum":
        raise ConfigError("horovod.compression=powersgd averages low-rank factors of the gradients; op=adasum does "
                          "not average (set horovod.op=average or prescaled, or another horovod.compression).")
    if cfg.horovod.bucket_mb > 0 and cfg.horovod.op == "adasum":
        raise ConfigError("horovod.bucket_mb averages gradients in buckets; it does not apply to op=adasum "
                          "(set horovod.bucket_mb=0).")
    if cfg.horovod.compression == "powersgd" and cfg.horovod.bucket_mb <= 0:
        raise ConfigError("horovod.compression=powersgd compresses gradient buckets: set horovod.bucket_mb (e.g. "
                          "25).")
    if cfg.horovod.op == "adasum" and cfg.train.elastic:
        raise ConfigError("horovod.op=adasum needs Horovod's MPI controller, and elastic training runs on Gloo; "
                          "set train.elastic=false or another horovod.op.")
    if cfg.horovod.op == "adasum" and (cfg.optim.clip_grad_norm > 0 or cfg.optim.name == "lamb"):
        # Horovod's Adasum reduces parameter updates: its hooks step the optimizer once per parameter during backward
        raise ConfigError("horovod.op=adasum steps the optimizer once per parameter during backward (Horovod reduces "
                          "updates, not gradients), so " + ("optim.clip_grad_norm cannot see the whole gradient; set "
                          "optim.clip_grad_norm=0" if cfg.optim.clip_grad_norm > 0 else "LAMB's step counter would "
                          "count parameters; use optim.name=sgd or lars") + " (or another horovod.op).")
    if cfg.horovod.op == "adasum" and cfg.train.precision == "fp16":
        raise ConfigError(ADASUM_WITH_A_LOSS_SCALER)
    if cfg.data.val_resize < cfg.data.image_size and cfg.data.backend != "synthetic":
        raise ConfigError(f"data.val_resize={cfg.data.val_resize} is smaller than data.image_size="
                          f"{cfg.data.image_size}: validation resizes the shorter side to val_resize, then takes the "
                          f"center image_size crop (ImageNet: 256, then 224). Set data.val_resize >= "
                          f"data.image_size.")
    if cfg.horovod.op != "average" and cfg.horovod.gradient_predivide_factor != 1.0:
        raise ConfigError(f"horovod.gradient_predivide_factor applies to op=average only; set it to 1.0 with "
                          f"{cfg.horovod.op}.")
    if not 0 <= cfg.data.hw_decoder_load <= 1:
        raise ConfigError(f"config key 'data.hw_decoder_load' must be in [0, 1], got {cfg.data.hw_decoder_load}.")
    parse_duration(cfg.train.max_time)
    if not 0 <= cfg.optim.label_smoothing < 1:
        raise ConfigError(f"config key 'optim.label_smoothing' must be in [0, 1), got {cfg.optim.label_smoothing}.")
    if not cfg.optim.momentum < 1:  # >= 0 above; 1 or more makes the velocity grow without bound
        raise ConfigError(f"config key 'optim.momentum' must be in [0, 1), got {cfg.optim.momentum}.")
    if not 0 <= cfg.train.target_top1 <= 100:  # a percentage: 150 was "not reached" at the end of every run
        raise ConfigError(f"config key 'train.target_top1' must be a percentage in [0, 100] (0 = off), got "
                          f"{cfg.train.target_top1}.")
    if not 0 <= cfg.train.seed < 2 ** 32:  # what numpy's global seed takes (run.setup.seed_everything)
        raise ConfigError(f"config key 'train.seed' must be in [0, 2**32), got {cfg.train.seed}.")
    if cfg.data.workers < -1:
        raise ConfigError(f"config key 'data.workers' must be -1 (the cores the worker owns) or >= 0, got "
                          f"{cfg.data.workers}.")


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in a duration: "23h50m", "90m", "1d12h", "3600", SLURM's "[D-]HH:MM:SS" / "MM:SS". "" = 0 (none)."""
    t = str(text).strip().lower()
    if not t:
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if m and ":" in t:
        days, *hms = m.groups()
        parts = [int(x) for x in hms if x is not None]
        # SLURM: MM:SS, HH:MM:SS, D-HH:MM, D-HH:MM:SS
        parts = parts if len(parts) == 3 else (parts + [0] if days else [0] + parts)
        return float(int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2])
    pieces = re.findall(r"(\d+(?:\.\d+)?)([dhms])", t)
    if pieces and "".join(n + u for n, u in pieces) == t:
        return float(sum(float(n) * _UNITS[u] for n, u in pieces))
    raise ConfigError(f"train.max_time must be a duration like 23h50m, 90m, 1-00:00:00 or seconds; got {text!r}.")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. optim.lr=0.2).")
    key, _, raw = text.partition("=")
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"override key '{key}' must be section.key (e.g. optim.lr).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc.problem}).") from None
    return key, value


def read_yaml(path: Path, what: str, shown: str | None = None):
    """A YAML file's content; a syntax error is one ConfigError line naming the file (as `shown`, default its
    path), line and column (PyYAML's own message spans several lines with a caret drawing)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} '{shown or path}' is not valid YAML{where}: {problem}.") from None


CHECKOUT = Path(__file__).resolve().parents[1]  # the hvdfast checkout, whose launch/configs/ hold the recipes


def locate(path: str | Path) -> Path:
    """A recipe's file as an absolute path: the path as given (relative to this folder), or, for a relative path
    that is not there, the same path in the hvdfast checkout, so `--config launch/configs/digits-cpu.yaml` works
    from any folder and a worker started in another folder reads the same file. Not found: the path as given (the
    caller's error names it)."""
    p = Path(path)
    if p.is_file():
        return p.resolve()
    if not p.is_absolute() and (CHECKOUT / p).is_file():
        return CHECKOUT / p
    return p


def read(path: Optional[str | Path] = None, overrides: typing.Sequence[str] = ()) -> tuple[dict, str]:
    """The user's settings as a nested mapping: the YAML recipe (or nothing) with the overrides applied on top,
    and a description of where they came from (for error messages)."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        p = locate(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found. Recipes live in launch/configs/ "
                              f"(e.g. launch/configs/digits-cpu.yaml).")
        source = str(path)  # as the user wrote it, in every message
        raw = read_yaml(p, "config file", shown=source) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{source}' must be a YAML mapping of sections "
                              f"(data, model, optim, horovod, train), got {type(raw).__name__}.")
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        key, value = parse_override(text)
        sec, name = key.split(".")
        if sec not in raw or raw[sec] is None:
            raw[sec] = {}
        if isinstance(raw[sec], dict):
            raw[sec][name] = value
    return raw, source + (" + overrides" if overrides else "")


def build(raw: dict, source: str, path: Optional[str | Path] = None) -> Config:
    """A validated Config from read()'s mapping; {config} in train.run_dir becomes the recipe's name."""
    cfg = from_dict(raw, source=source)
    if "{config}" in cfg.train.run_dir:
        cfg = replace(cfg, "train.run_dir",
                      cfg.train.run_dir.replace("{config}", Path(path).stem if path is not None else "default"))
    return cfg


def load(path: Optional[str | Path] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML recipe (or defaults when path is None) and apply `section.key=value` overrides.
    The user's settings only: `hvdfast.tuned.load_config` adds what `hvdfast tune` measured."""
    return build(*read(path, overrides), path)


def replace(cfg: Config, path: str, value: Any) -> Config:
    sec, name = path.split(".")
    return dataclasses.replace(cfg, **{sec: dataclasses.replace(getattr(cfg, sec), **{name: value})})


def to_dict(cfg: Config) -> dict:
    out = dataclasses.asdict(cfg)
    for sec in out.values():
        for k, v in sec.items():
            if isinstance(v, tuple):
                sec[k] = list(v)
    return out


def to_flat(cfg: Config) -> dict:
    return {f"{s}.{k}": v for s, sec in dataclasses.asdict(cfg).items() for k, v in sec.items()}


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe() -> dict[str, str]:
    """{"section.key": what it means}, read from the comments beside each field in this file (the one place a key
    is documented; `hvdfast train --keys` prints them). A field's comment is the one on its line and the comment
    lines under it."""
    sections = {typing.get_type_hints(Config)[s].__name__: s for s in typing.get_type_hints(Config)}
    out: dict[str, str] = {}
    section = key = None
    field_line = re.compile(r"^    (\w+): [^=]+=")
    for tok in tokenize.generate_tokens(io.StringIO(Path(__file__).read_text()).readline):
        line = tok.line
        if tok.type == tokenize.NAME and tok.string == "class" and tok.start[1] == 0:
            section, key = sections.get(line.split()[1].split("(")[0].rstrip(":")), None
        elif section and tok.type == tokenize.NAME and tok.start[1] == 4 and field_line.match(line):
            key = f"{section}.{tok.string}"
            out[key] = ""
        elif tok.type == tokenize.COMMENT and key:
            if line.strip().startswith("#") and not out[key]:
                key = None  # a comment block under a key that had none on its own line belongs to no key
                continue
            out[key] = f"{out[key]} {tok.string.lstrip('#').strip()}".strip()
        elif tok.type == tokenize.DEDENT and tok.start[1] == 0:
            section = key = None
    return out


def explain(cfg: Config, origins: dict[str, str], text: str = "", width: int = 100) -> str:
    """`hvdfast train --keys [TEXT]`: every key (or those whose name, else whose description, holds TEXT) as
    `key=value  (where the value came from)` with what it means under it, wrapped to `width`."""
    docs = describe()
    flat = to_flat(cfg)
    wanted = [k for k in flat if text.lower() in k.lower()] or \
             [k for k in flat if text.lower() in docs[k].lower()]
    if not wanted:
        hint = " (overrides go before --keys: hvdfast train KEY=VALUE --keys TEXT)" if "=" in text else ""
        raise ConfigError(f"no config key or description mentions '{text}'{hint}; `hvdfast train --keys` lists "
                          f"them all.")
    blocks = []
    for i, key in enumerate(wanted):
        if i and key.split(".")[0] != wanted[i - 1].split(".")[0]:
            blocks.append("")  # a blank line between sections
        value = yaml.safe_dump(list(flat[key]) if isinstance(flat[key], tuple) else flat[key],
                               default_flow_style=True, width=1000).split("\n")[0]
        blocks.append(f"{key}={value}  ({origins.get(key, 'default')})\n"
                      + textwrap.fill(docs[key], width=width, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(blocks) + "\n"
