"""Photo-like JPEGs of ImageNet-like sizes for data benchmarks: random crops of the two real photographs that
scikit-learn bundles (china.jpg, flower.jpg, 427x640), each 300-427 x 350-640 px with flips and colour jitter."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write(out_dir: str | Path, images: int = 512, val: int = 64, seed: int = 0, quality: int = 90) -> dict:
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    sources = [Image.fromarray(img) for img in sample.images]
    names = [Path(f).stem for f in sample.filenames]
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    counts = {}
    for split, n in (("train", images), ("val", val)):
        for name in names:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            c = i % len(sources)
            src = sources[c]
            h = int(rng.integers(300, min(427, src.height) + 1))
            w = int(rng.integers(350, min(640, src.width) + 1))
            top = int(rng.integers(0, src.height - h + 1))
            left = int(rng.integers(0, src.width - w + 1))
            img = src.crop((left, top, left + w, top + h))
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
            img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
            img.save(out / split / names[c] / f"{split}_{i:05d}.jpg", quality=quality)
        counts[split] = n
    return counts
