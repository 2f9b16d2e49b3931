"""ImageFolder scanning, shared by every file-based backend and by `hvdfast data check`.

A data set is DIR/train/<class>/<image> and DIR/val/<class>/<image>. Problems are raised as DataError with a
message that says what to do, before any worker starts decoding.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(RuntimeError):
    """A data problem the user can fix; the message names the path and the remedy."""


@dataclass(frozen=True)
class Split:
    root: Path
    classes: tuple[str, ...]
    files: tuple[str, ...]     # paths relative to root, sorted
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]


def _entries(folder: Path) -> list[os.DirEntry]:
    """A folder's entries with the file type the directory itself records (d_type): telling files from folders
    costs no stat per file. ImageNet's 1.28M files were 1.28M stats (metadata round trips on a parallel file
    system) with Path.iterdir() + is_dir()."""
    with os.scandir(folder) as it:  # an error here is scan()'s one line
        return list(it)


def scan_split(root: Path, classes: tuple[str, ...] | None = None) -> Split:
    root = Path(root)
    found = tuple(sorted(e.name for e in _entries(root) if not e.name.startswith(".") and e.is_dir()))
    if not found:
        raise DataError(f"data folder '{root}' has no class folders; expected {root}/<class>/<image>.jpg.")
    if classes is not None and found != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise DataError(f"class folders in '{root}' differ from the training split "
                        f"(missing: {missing[:5] or 'none'}, extra: {extra[:5] or 'none'}); "
                        f"train/ and val/ must hold the same classes.")
    files, labels = [], []
    for label, name in enumerate(found):
        # hidden files are not images of the set: macOS writes "._<name>.jpg" (AppleDouble metadata) beside every
        # file it copies to a foreign file system, and each one failed to decode mid-training
        imgs = sorted(e.name for e in _entries(root / name) if not e.name.startswith(".")
                      and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and not e.is_dir())
        if not imgs:
            raise DataError(f"class folder '{root / name}' has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"add images or remove the folder.")
        files.extend(f"{name}/{f}" for f in imgs)
        labels.extend([label] * len(imgs))
    return Split(root=root, classes=found, files=tuple(files), labels=tuple(labels))


def scan(data_dir: str | Path) -> tuple[Split, Split]:
    try:
        return _scan(Path(data_dir))
    except OSError as exc:  # a folder on the way the workers' user may not read (EACCES), an I/O error
        raise DataError(f"cannot read data folder '{data_dir}': {exc.strerror or exc}"
                        f"{f' (at {exc.filename})' if exc.filename else ''}. Make it readable by the user the "
                        f"workers run as.") from None


def _scan(data_dir: Path) -> tuple[Split, Split]:
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"data.dir '{data_dir}' is a file, not a folder: point it at an ImageFolder root "
                        f"(train/<class>/*.jpg, val/<class>/*.jpg).")
    if not data_dir.is_dir():
        raise DataError(f"data folder '{data_dir}' does not exist. Create an embedded data set there with "
                        f"'hvdfast data digits {data_dir}' (or 'hvdfast data mnist {data_dir}'), or set data.dir "
                        f"to an ImageFolder root (train/<class>/*.jpg, val/<class>/*.jpg).")
    for split in ("train", "val"):
        if not (data_dir / split).is_dir():  # never advise writing the embedded set into the user's data set
            raise DataError(f"data folder '{data_dir}' has no {split}/ folder: an ImageFolder root holds "
                            f"train/<class>/<image> and val/<class>/<image>, the same classes in both (hold out a "
                            f"share of each class's images as val/).")
    train = scan_split(data_dir / "train")
    if len(train.classes) < 2:  # trained to "100%" with a loss of 0: nothing to tell apart
        raise DataError(f"'{data_dir / 'train'}' has one class folder ({train.classes[0]}); a classifier needs two "
                        f"or more, one folder per class (train/<class>/<image>). Is data.dir one level too deep?")
    val = scan_split(data_dir / "val", classes=train.classes)
    return train, val


def check_target(out: str | Path, files: set[str], verb: str) -> None:
    """Before `hvdfast data VERB` writes a generated set (`files`: its paths relative to `out`): refuse a folder
    that holds anything else, which the set's classes and images would mix into (another data set, the other
    embedded set, or this one at another size). Rewriting the same set is fine; hidden files are not images."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"'{out}' is a file; give hvdfast data {verb} a new or empty folder.")
    for folder, dirs, names in os.walk(out):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(folder, name), out)
            if not name.startswith(".") and rel not in files:
                raise DataError(f"'{out}' already holds files that are not this data set's (e.g. {rel}); "
                                f"hvdfast data {verb} writes into a new or empty folder, or over its own earlier "
                                f"output, so that two data sets never mix into one.")


def check_size(n_images: int, size: int, batch: int, what: str) -> None:
    if n_images < size * batch:
        raise DataError(f"{what} has {n_images} images, fewer than workers x batch = {size} x {batch}; "
                        f"lower data.batch_size to at most {max(1, n_images // size)} or use fewer workers.")


def shard_indices(n: int, rank: int, size: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """This rank's sample order for one epoch: a function of (seed, epoch) alone, so a resumed run replays it.

    Training (shuffle=True): a seeded permutation padded by wrap-around to a multiple of `size`, then strided,
    so every rank gets exactly ceil(n / size) samples (same steps per epoch everywhere, no rank waits).
    Validation (shuffle=False): a strided slice without padding, so every image is counted exactly once.
    """
    import torch

    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        total = math.ceil(n / size) * size
        order = (order * (total // n + 1))[:total]
    else:
        order = list(range(n))
    return order[rank::size]
