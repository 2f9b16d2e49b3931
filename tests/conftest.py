"""Shared fixtures: the embedded digits data set, small JPEG trees, the real launchers, and the short
deterministic recipe the preemption and SLURM tests stop and resume."""
from __future__ import annotations

import json
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


def run_launcher(kind: str, np: int, args: list[str], timeout: float = 300, cwd: Path | None = None,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """The launcher's run to its end; `env` adds to launcher_env() (the local ranks inherit it)."""
    if kind == "mpirun" and shutil.which("mpirun") is None:
        pytest.skip("mpirun not on PATH (Horovod built with Gloo only)")
    return subprocess.run(launch_cmd(kind, np, args), env={**launcher_env(), **(env or {})}, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


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


def skip_unless_root_with(tools, root_reason: str, packages: str) -> None:
    """Skip, saying why, unless this is root and every tool is installed (launch/test.sh apt-installs `packages`
    as root)."""
    if os.geteuid() != 0:
        pytest.skip(root_reason)
    missing = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (launch/test.sh installs {packages} as root)")


def hvdfast_cmd(*args: str) -> list[str]:
    return [str(BIN / "hvdfast"), *args]


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from hvdfast.data import embedded
    d = tmp_path_factory.mktemp("digits")
    embedded.write("digits", d)
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


@pytest.fixture(scope="session")
def short_digits_dir(digits_dir, tmp_path_factory) -> Path:
    """The embedded digits' first SHORT_TRAIN_PER_CLASS training and SHORT_VAL_PER_CLASS validation images of
    each class (real images, stratified): 20 steps per epoch at global batch 32 where the whole set takes 45. For
    the tests that train whole runs to compare them (stop and resume, ranks and variants bit-identical): their
    time goes to what they check, not to training, and ResNet-18 still learns (95% top-1 in 2 epochs)."""
    d = tmp_path_factory.mktemp("digits-short")
    for split, n in (("train", SHORT_TRAIN_PER_CLASS), ("val", SHORT_VAL_PER_CLASS)):
        for cls in sorted((digits_dir / split).iterdir()):
            (d / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, d / split / cls.name / f.name)
    return d


# The preemption recipe (test_preempt, test_slurm, test_study, test_resume): 2 ranks, ResNet-18 on 32 px digits
# (short_digits_dir), deterministic.
SHORT_TRAIN_PER_CLASS, SHORT_VAL_PER_CLASS = 64, 20
STEPS_PER_EPOCH = 20    # 640 images, global batch 32
STEPS = 40              # 2 epochs
SIGNAL_AFTER_STEP = 25  # in epoch 2 (steps 20..40): the stop lands mid-epoch
TRAIN = ["--config", str(ROOT / "launch/configs/digits-cpu.yaml"), "data.backend=torchvision", "data.workers=0",
         "model.name=resnet18", "data.image_size=32", "data.val_resize=32", "data.batch_size=16",
         "train.epochs=2", "train.deterministic=true", "train.log_every=5", "train.progress=lines",
         "train.target_top1=0", "train.keep_checkpoints=5"]


def train_args(digits_dir, run_dir, *extra):
    return [sys.executable, "-m", "hvdfast.cli", "train", *TRAIN, f"data.dir={digits_dir}",
            f"train.run_dir={run_dir}", *extra]


def params(run_dir: Path) -> dict:
    from hvdfast import checkpoint
    state = checkpoint.load(checkpoint.list_checkpoints(run_dir / "checkpoints")[0])
    assert state["step"] == STEPS
    return state["model"]


def assert_same_parameters(a: dict, b: dict) -> None:
    # The weights are bit-identical. BatchNorm running statistics are averaged over the ranks at every checkpoint
    # (the stop's included), so an interrupted run's differ from an uninterrupted one's by rounding, carried on
    # through the later updates (measured: at most 5.5e-6 relative).
    import torch
    import torchvision
    names = {n for n, _ in torchvision.models.resnet18(num_classes=10).named_parameters()}
    assert names and names <= a.keys() and a.keys() == b.keys()
    assert [n for n in names if not torch.equal(a[n], b[n])] == []
    assert [n for n in a if n not in names and not torch.allclose(a[n].double(), b[n].double(), rtol=1e-4)] == []


def trained_step(run_dir: Path) -> int:
    """The newest training step rank 0 has logged (metrics.jsonl, every 5 steps)."""
    try:
        rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(r)["step"] for r in rows if '"kind": "train"' in r]
    return max(steps, default=0)
