"""Photo-like JPEGs of ImageNet-like sizes for data benchmarks: random crops of the two real photographs that
scikit-learn bundles (china.jpg, flower.jpg, 427x640), each 300-427 x 350-640 px with flips and colour jitter.

Each image draws from its own random stream (seed, split, index), so the files are the same whatever the number
of worker processes writing them."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .folder import check_target

_SOURCES = None


def _sources():
    global _SOURCES
    if _SOURCES is None:
        from PIL import Image
        from sklearn.datasets import load_sample_images
        sample = load_sample_images()
        _SOURCES = [(Path(f).stem, Image.fromarray(img)) for f, img in zip(sample.filenames, sample.images)]
    return _SOURCES


def _write_one(out: str, split: str, i: int, seed: int, quality: int) -> None:
    from PIL import Image, ImageEnhance
    sources = _sources()
    name, src = sources[i % len(sources)]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
    h = int(rng.integers(300, min(427, src.height) + 1))
    w = int(rng.integers(350, min(640, src.width) + 1))
    top = int(rng.integers(0, src.height - h + 1))
    left = int(rng.integers(0, src.width - w + 1))
    img = src.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
    img.save(Path(out) / split / name / f"{split}_{i:05d}.jpg", quality=quality)


def _write_range(args) -> int:
    out, split, start, stop, seed, quality = args
    for i in range(start, stop):
        _write_one(out, split, i, seed, quality)
    return stop - start


def write(out_dir: str | Path, images: int = 512, val: int = 64, seed: int = 0, quality: int = 90,
          workers: int = 0) -> dict:
    """Write `images` training and `val` validation JPEGs; `workers` processes (0: one per core)."""
    out = Path(out_dir)
    names = [name for name, _ in _sources()]
    check_target(out, {f"{split}/{names[i % len(names)]}/{split}_{i:05d}.jpg"
                       for split, n in (("train", images), ("val", val)) for i in range(n)}, "photos")
    workers = workers or os.cpu_count() or 1
    counts = {}
    jobs = []
    for split, n in (("train", images), ("val", val)):
        for name, _ in _sources():
            (out / split / name).mkdir(parents=True, exist_ok=True)
        step = max(1, min(256, n // workers))
        jobs += [(str(out), split, s, min(n, s + step), seed, quality) for s in range(0, n, step)]
        counts[split] = n
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            _write_range(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_range, jobs))
    return counts
