"""`hvdfast data pack SRC DST --shard-size N`: an ImageFolder as WebDataset tar shards plus DALI's index files.

Millions of small files are slow on cluster file systems; a few hundred tar shards read sequentially are not.
Layout: DST/<split>/shard-00000.tar (+ .idx from DALI's wds2idx), DST/classes.txt, DST/<split>/meta.json.
Each sample is <key>.jpg (the original bytes), <key>.cls (the label in ASCII, the WebDataset convention) and
<key>.label (the label as little-endian int64, which DALI's reader returns as a number with dtypes=INT64).
Training samples are shuffled once at pack time (seeded) so every shard holds every class.
"""
from __future__ import annotations

import io
import json
import math
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from .folder import DataError, check_target, scan

META = "meta.json"


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(payload))


def _wds2idx() -> str:
    exe = shutil.which("wds2idx") or str(Path(sys.executable).parent / "wds2idx")
    if not Path(exe).exists():
        raise DataError("wds2idx (shipped with NVIDIA DALI) not found; install DALI with launch/install.sh.")
    return exe


def pack(src: str | Path, dst: str | Path, shard_size: int = 1000, seed: int = 0) -> dict:
    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {shard_size}")
    train, val = scan(src)
    dst = Path(dst)
    # a new or empty folder, or an earlier pack of the same layout: never shards written into an ImageFolder (or
    # into the source), and never an older pack's extra shards left beside the new ones
    check_target(dst, {"classes.txt"} | {f"{name}/{f}" for name, split in (("train", train), ("val", val))
                                        for f in [META] + [f"shard-{k:05d}.{ext}" for k in
                                                           range(math.ceil(len(split) / shard_size))
                                                           for ext in ("tar", "idx")]}, "pack")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "classes.txt").write_text("\n".join(train.classes) + "\n")
    counts = {}
    idx_tool = _wds2idx()
    for name, split in (("train", train), ("val", val)):
        out = dst / name
        out.mkdir(exist_ok=True)
        order = list(range(len(split)))
        if name == "train":
            random.Random(seed).shuffle(order)
        shards = []
        for start in range(0, len(order), shard_size):
            tar_path = out / f"shard-{len(shards):05d}.tar"
            with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in order[start:start + shard_size]:
                    key = f"{name}{i:08d}"
                    label = split.labels[i]
                    _add(tar, f"{key}.jpg", split.path(i).read_bytes())
                    _add(tar, f"{key}.cls", str(label).encode())
                    _add(tar, f"{key}.label", np.int64(label).tobytes())
            subprocess.run([idx_tool, str(tar_path), str(tar_path.with_suffix(".idx"))], check=True,
                           capture_output=True)
            shards.append(tar_path.name)
        (out / META).write_text(json.dumps({"samples": len(order), "shards": shards,
                                            "classes": len(train.classes)}, indent=1))
        counts[name] = {"samples": len(order), "shards": len(shards)}
    return counts


def is_packed(data_dir: str | Path) -> bool:
    return (Path(data_dir) / "train" / META).is_file()


def read_meta(split_dir: Path) -> dict:
    try:
        return json.loads((split_dir / META).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"'{split_dir / META}' is missing or unreadable ({exc}); re-create the shards with "
                        f"'hvdfast data pack SRC DST'.") from None
