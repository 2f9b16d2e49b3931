"""Input pipelines behind one interface: build(cfg, dist) -> Data(train, val, num_classes, backend)."""
from __future__ import annotations

from .common import Data, Loader
from pathlib import Path

from .folder import DataError, Split, check_size, scan
from .pack import is_packed


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
        return True
    except Exception:
        return False


def resolve_backend(name: str) -> str:
    if name == "auto":
        return "dali" if dali_available() else "torchvision"
    if name == "dali" and not dali_available():
        raise DataError("data.backend=dali but NVIDIA DALI does not import here; install it with "
                        "launch/install.sh (nvidia-dali-cuda130) or set data.backend=torchvision.")
    return name


def scan_once(data_dir, info, collectives: bool = True) -> tuple[Split, Split]:
    """The ImageFolder's two splits, listed by rank 0 alone and broadcast to the others: one listing per job, not
    one per rank. At 1,024 ranks over ImageNet that is 1.3 billion directory entries served by a parallel file
    system's metadata server against 1.28 million, for a 46 MB broadcast. A problem rank 0 finds (no folder, an
    empty class) reaches every rank as the same DataError. collectives=False (an elastic worker building alone):
    every rank lists the folder itself."""
    if info.size == 1 or not collectives:
        return scan(data_dir)
    from .. import dist
    found = None
    if info.rank == 0:
        try:
            found = scan(data_dir)
        except DataError as exc:
            found = exc
    # Horovod: rank 0's listing, or the problem it met, to every rank
    found = dist.broadcast_object(found, name="data.scan")
    if isinstance(found, DataError):
        raise found
    return found


def loader_workers(requested: int, cores: int) -> int:
    """Loader processes / decode threads per worker: the cores it owns, in-process when it owns one."""
    if requested >= 0:
        return requested
    return cores if cores > 1 else 0


def build(cfg, dist, collectives: bool = True) -> Data:
    """collectives=False: no cross-rank exchange while building (DALI's skip_corrupt check then reads every file on
    every rank)."""
    backend = resolve_backend(cfg.data.backend)
    if backend == "synthetic":
        from . import synthetic
        train, val = synthetic.build(cfg, dist)
        return Data(train=train, val=val, num_classes=cfg.data.synthetic_classes, backend=backend)
    workers = loader_workers(cfg.data.workers, dist.cores_per_rank)
    if is_packed(cfg.data.dir):
        # Horovod: WebDataset shards (hvdfast data pack) are read by DALI, sharded by global rank.
        if backend != "dali":
            raise DataError(f"'{cfg.data.dir}' holds packed WebDataset shards, which only the DALI backend reads; "
                            f"set data.backend=dali, or point data.dir at the unpacked ImageFolder.")
        from . import dali
        train, val = dali.build(cfg, dist, None, None, threads=max(1, workers))
        check_size(train.images, dist.size, cfg.data.batch_size, f"training shards in '{cfg.data.dir}'")
        classes = (Path(cfg.data.dir) / "classes.txt").read_text().split()
        return Data(train=train, val=val, num_classes=len(classes), backend="dali-webdataset", classes=tuple(classes))
    train_split, val_split = scan_once(cfg.data.dir, dist, collectives)
    check_size(len(train_split), dist.size, cfg.data.batch_size, f"training split '{train_split.root}'")
    if backend == "dali":
        from . import dali
        train, val = dali.build(cfg, dist, train_split, val_split, threads=max(1, workers), collectives=collectives)
    else:
        from . import torchvision as tv
        train, val = tv.build(cfg, dist, train_split, val_split, workers)
    return Data(train=train, val=val, num_classes=len(train_split.classes), backend=backend,
                classes=tuple(train_split.classes))


__all__ = ["Data", "DataError", "Loader", "build", "dali_available", "resolve_backend"]
