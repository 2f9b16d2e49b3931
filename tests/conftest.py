"""Shared fixtures: the embedded digits data set, small JPEG trees, and the real launchers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hvdfast.launch import commands

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Tests must not pick up this machine's `hvdfast tune` result (in this process or in launched ones).
os.environ["HVDFAST_TUNED"] = str(ROOT / "tests" / "no-tuned-file.yaml")


def launcher_env() -> dict:
    # No ptrace (CMA) in most containers: use copy-in/copy-out shared memory.
    env = commands.process_env(PYTHONPATH=str(ROOT))
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    return env


def launch_cmd(kind: str, np: int, args: list[str]) -> list[str]:
    """The real launchers, through the builder `hvdfast launch` uses (hvdfast/launch/commands.py)."""
    if kind in ("gloo", "horovodrun-mpi"):
        return commands.horovodrun(np, args, controller="gloo" if kind == "gloo" else "mpi")
    if kind == "mpirun":
        return commands.mpirun(np, args, oversubscribe=True)
    raise ValueError(kind)


def run_launcher(kind: str, np: int, args: list[str], timeout: float = 300,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    if kind == "mpirun" and shutil.which("mpirun") is None:
        pytest.skip("mpirun not on PATH (Horovod built with Gloo only)")
    return subprocess.run(launch_cmd(kind, np, args), env=launcher_env(), cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout)


def worker_pid(env_entry: str, marker: str):
    """PID of the hvdfast worker whose environment holds `env_entry` (e.g. HOROVOD_RANK=1) and whose command
    line contains `marker` (a run directory): how tests find the one worker to kill."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if env_entry.encode() in env and marker.encode() in cmdline and b"hvdfast" in cmdline:
            return int(d.name)
    return None


def hvdfast_cmd(*args: str) -> list[str]:
    return [str(BIN / "hvdfast"), *args]


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from hvdfast.data import digits
    d = tmp_path_factory.mktemp("digits")
    digits.write(d)
    return d


def make_jpeg_tree(root: Path, classes: int, per_class: dict, side: int = 40, seed: int = 0) -> Path:
    """A small ImageFolder of real JPEG files: per_class = {'train': n, 'val': m}."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((side, side, 3), np.uint8)
                base[..., c % 3] = 30 + (60 + 37 * c) % 200
                img = (base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"img_{c}_{i:03d}.jpg", quality=90)
    return root
