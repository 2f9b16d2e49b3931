"""The embedded real data set: scikit-learn's handwritten digits (1,797 8x8 scans) as an ImageFolder of JPEGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SIDE = 64          # px: 8x8 scans are upscaled to this side
SEED = 0           # fixed split
VAL_FRACTION = 0.2


def write(out_dir: str | Path, side: int = SIDE, quality: int = 95) -> dict:
    """Write DIR/train/<digit>/*.jpg and DIR/val/<digit>/*.jpg (stratified 80/20). Returns counts per split."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(idx, test_size=VAL_FRACTION, random_state=SEED,
                                          stratify=digits.target)
    out = Path(out_dir)
    counts = {}
    for split, ids in (("train", train_idx), ("val", val_idx)):
        for c in range(10):
            (out / split / str(c)).mkdir(parents=True, exist_ok=True)
        for i in sorted(ids):
            gray = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(gray, mode="L").resize((side, side), Image.BICUBIC).convert("RGB")
            img.save(out / split / str(digits.target[i]) / f"digit_{i:04d}.jpg", quality=quality)
        counts[split] = len(ids)
    return counts


def ensure(out_dir: str | Path) -> bool:
    """Create the data set if DIR/train is missing. Returns True when it was written now."""
    if (Path(out_dir) / "train").is_dir():
        return False
    write(out_dir)
    return True
