"""The tuned-settings file that `hvdfast tune` writes: where it lives, what it holds, and how it joins a config.

Precedence: recipe < tuned file < Horovod's own variables in the environment (HOROVOD_FUSION_THRESHOLD,
HOROVOD_CYCLE_TIME, HOROVOD_STALL_CHECK_TIME_SECONDS: what horovodrun's flags set) < command-line overrides,
applied here and nowhere else (`load_config`). A tuned value is a measured way to go faster, never a change of
what is trained, so it is left out (with a note saying why) where it would replace a setting the user made on the
command line, change the reduction the recipe chose (op=adasum), or make the config invalid (e.g. buckets with
op=adasum, PowerSGD with elastic, prescaled with gradient_predivide_factor).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from . import config, knobs
from .config import Config, ConfigError

# the settings of a file that apply (an older file without mpi_allreduce leaves the recipe's)
TUNED_KEYS = ("fusion_threshold_mb", "cycle_time_ms", "compression", "op", "bucket_mb", "mpi_allreduce")


def default_path() -> Path:
    env = os.environ.get("HVDFAST_TUNED")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "hvdfast" / "tuned.yaml"


def load(path: str | Path | None = None) -> dict | None:
    p = Path(path) if path else default_path()
    if not p.is_file():
        return None
    try:
        data = config.read_yaml(p, "tuned settings file") or {}
    except ConfigError as exc:
        raise ConfigError(f"{exc} Run hvdfast tune again, or delete the file.") from None
    return data if isinstance(data, dict) else None


def for_config(cfg: Config) -> dict | None:
    """The tuned file a config uses (None with horovod.tuned=never, or with auto when there is none)."""
    choice = cfg.horovod.tuned
    if choice == "never":
        return None
    doc = load(None if choice == "auto" else choice)
    if doc is None and choice != "auto":
        raise ConfigError(f"horovod.tuned='{choice}' is not a file written by 'hvdfast tune'.")
    return doc


def origins(path: str | Path | None, overrides: Sequence[str], cfg: Config,
            environ=None) -> dict[str, str]:
    """Where each of load_config's values came from: override | environment | tuned file | recipe | default
    (`--keys`)."""
    recipe = config.read(path)[0] if path is not None else {}
    explicit = {config.parse_override(t)[0] for t in overrides}
    mine = config.to_flat(config.load(path, overrides))
    from_env = _resolve(path, overrides, os.environ if environ is None else environ)[2]
    out = {}
    for key, value in config.to_flat(cfg).items():
        sec, name = key.split(".")
        out[key] = ("override" if key in explicit else "environment" if key in from_env
                    else "tuned file" if value != mine[key]
                    else "recipe" if name in (recipe.get(sec) or {}) else "default")
    return out


def launcher_env(doc: dict | None) -> dict:
    """Environment the tuned file asks every rank to start with (set by the launch helpers: GLIBC_TUNABLES is
    read when a process starts, before any Python runs)."""
    return {k: str(v) for k, v in ((doc or {}).get("launcher", {}).get("env") or {}).items()}


def controller(cfg: Config) -> Optional[str]:
    """The Horovod controller (mpi | gloo) the config's tuned file measured fastest, or None."""
    return ((for_config(cfg) or {}).get("launcher") or {}).get("controller")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                environ=None) -> tuple[Config, list[str]]:
    """The run's config: the user's (validated on its own first, so their mistakes are reported as theirs) with
    the tuned file's settings overlaid where they apply, then Horovod's own variables from the environment, and one
    note per setting taken or left out."""
    cfg, notes, _ = _resolve(path, overrides, os.environ if environ is None else environ)
    return cfg, notes


def _resolve(path, overrides, environ) -> tuple[Config, list[str], set[str]]:
    """(config, notes, the keys Horovod's environment variables set)."""
    raw, source = config.read(path, overrides)
    mine = config.build(raw, source, path)
    explicit = {config.parse_override(t)[0] for t in overrides}
    notes = []
    doc = for_config(mine)
    for key, value in ((doc or {}).get("horovod") or {}).items():
        if key not in TUNED_KEYS or f"horovod.{key}" in explicit:
            continue
        if key == "op" and mine.horovod.op == "adasum":
            notes.append(f"tuned horovod.op={value} not applied: the recipe chose op=adasum, a different "
                         f"reduction rather than a slower way to average")
            continue
        trial = {**raw, "horovod": {**(raw.get("horovod") or {}), key: value}}
        try:
            config.build(trial, f"{source} + tuned file", path)
        except ConfigError as exc:
            notes.append(f"tuned horovod.{key}={value} not applied: {exc}")
            continue
        raw = trial
    if doc:
        source = f"{source} + tuned file"
    cfg = config.build(raw, source, path)
    # Horovod's own variables (an export in a batch script, horovodrun --cycle-time-ms): they outrank the recipe and
    # the tuned file, as Horovod's users expect of them, and give way to the command line
    taken = set()
    for key, (value, var) in knobs.set_in_environment(environ, cfg.horovod).items():
        if key in explicit:
            notes.append(f"{var}={environ[var]} in the environment gives way to the command line's {key}="
                         f"{getattr(cfg.horovod, key.split('.')[1])}")
            continue
        trial = {**raw, "horovod": {**(raw.get("horovod") or {}), key.split(".")[1]: value}}
        try:
            config.build(trial, source, path)
        except ConfigError as exc:
            raise ConfigError(f"{var}={environ[var]} in the environment: {exc} Unset it, or set {key} "
                              f"instead.") from None
        raw = trial
        taken.add(key)
        notes.append(f"{key}={value:g} from {var}={environ[var]} in the environment (Horovod's own knob; it "
                     f"outranks the recipe and the tuned file, not the command line)")
    return config.build(raw, source, path), notes, taken
