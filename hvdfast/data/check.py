"""`hvdfast data check DIR`: classes and images per split, and every file that fails to decode."""
from __future__ import annotations

from pathlib import Path

from .folder import scan


def undecodable(paths) -> list[tuple[Path, str]]:
    from PIL import Image
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception as exc:
            bad.append((p, f"{type(exc).__name__}: {exc}"))
    return bad


def main(data_dir: str) -> int:
    train, val = scan(data_dir)
    print(f"{data_dir}: {len(train.classes)} classes")
    bad = []
    for name, split in (("train", train), ("val", val)):
        counts = [split.labels.count(i) for i in range(len(split.classes))]
        print(f"  {name}: {len(split)} images, {min(counts)}-{max(counts)} per class")
        bad += undecodable(split.path(i) for i in range(len(split)))
    if bad:
        print(f"{len(bad)} file(s) fail to decode (remove or replace them, or train with data.skip_corrupt=true):")
        for p, why in bad:
            print(f"  {p}: {why}")
        return 1
    print("all images decode")
    return 0
