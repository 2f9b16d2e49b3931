"""torchvision backend: PIL decode + transforms in a DataLoader, sharded by our (seed, epoch) sampler."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from .common import IMAGENET_MEAN, IMAGENET_STD, to_device
from .folder import DataError, Split, shard_indices


class CorruptImageError(DataError):
    rank_local = True  # only the rank whose shard holds the file sees it: that rank reports it


def train_transform(image_size: int, crop_scale, flip: bool):
    import torchvision.transforms as T
    ops = [T.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def val_transform(image_size: int, resize: int):
    import torchvision.transforms as T
    return T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class FolderDataset(Dataset):
    def __init__(self, split: Split, transform, skip_corrupt: bool, seed: int = 0, substitute: bool = True):
        self.split, self.transform, self.skip_corrupt = split, transform, skip_corrupt
        self.substitute = substitute  # training: replace a skipped file (full batches); validation: drop it
        self.seed, self.epoch = seed, 0

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        """(image, label, paths of undecodable files passed over). With skip_corrupt, a file that fails to decode
        is replaced by the next one of the split that decodes: every batch stays full, so every rank takes the
        same number of steps (a rank one step short would leave the others waiting in the allreduce)."""
        from PIL import Image
        bad = []
        for k in range(len(self.split)):
            j = (i + k) % len(self.split)
            path = self.split.path(j)
            try:
                with Image.open(path) as im:
                    img = im.convert("RGB")
                break
            except Exception as exc:  # PIL raises several types for bad files
                if not self.skip_corrupt:
                    # Reported from the main process (an exception raised in a loader worker arrives as a
                    # traceback dump).
                    return Undecodable(str(path), f"{type(exc).__name__}: {exc}")
                bad.append(str(path))
                if not self.substitute:
                    return Skipped(str(path))
        else:
            return Undecodable(str(self.split.path(i)), "no file of the split decodes")
        # Augmentation is a function of (seed, epoch, sample): the same in any worker process, and replayed
        # exactly by a run resumed mid-epoch. The transforms draw from the CPU generator, so only it is seeded:
        # torch.manual_seed also queues a seed for every accelerator not yet started, formatting a stack trace
        # for each (half of a 32-px digit's 0.9 ms here).
        torch.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        return self.transform(img), self.split.labels[j], bad


class Undecodable(NamedTuple):
    path: str
    reason: str


class Skipped(NamedTuple):
    path: str


def corrupt_error(path, reason: str, data_root) -> CorruptImageError:
    return CorruptImageError(f"cannot decode image '{path}' ({reason}). Remove or replace it ('hvdfast data check "
                             f"{data_root}' lists all such files), or set data.skip_corrupt=true to skip them.")


def _collate(batch):
    failed = [b for b in batch if isinstance(b, Undecodable)]
    if failed:
        return None, None, failed
    skipped = [b.path for b in batch if isinstance(b, Skipped)]
    good = [b for b in batch if not isinstance(b, Skipped)]
    if not good:  # validation only (training substitutes): a batch of nothing
        return None, None, skipped
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, skipped + [p for b in good for p in b[2]]


class TorchvisionLoader:
    def __init__(self, split: Split, transform, *, rank: int, size: int, batch: int, seed: int, train: bool,
                 workers: int, device: torch.device, channels_last: bool, skip_corrupt: bool):
        self.dataset = FolderDataset(split, transform, skip_corrupt, seed, substitute=train)
        self.rank, self.size, self.batch, self.seed, self.train = rank, size, batch, seed, train
        self.workers, self.device, self.channels_last = workers, device, channels_last
        self.images = len(split)
        self.bad_files: set[str] = set()
        per_rank = len(shard_indices(len(split), rank, size, seed, 0, shuffle=train))
        # Training pads the last batch by repeating this rank's first samples (every image is seen each epoch,
        # every rank takes the same number of full steps); validation keeps a partial last batch instead.
        self.steps_per_epoch = -(-per_rank // batch)

    def indices(self, epoch: int) -> list[int]:
        return shard_indices(len(self.dataset), self.rank, self.size, self.seed, epoch, shuffle=self.train)

    def epoch(self, epoch: int, skip: int = 0):
        idx = self.indices(epoch)
        if self.train:
            idx = (idx * 2)[: self.steps_per_epoch * self.batch]
        idx = idx[skip * self.batch:]
        self.dataset.epoch = epoch  # read by the loader's worker processes, which start below
        loader = DataLoader(self.dataset, batch_size=self.batch, sampler=idx, num_workers=self.workers,
                            collate_fn=_collate, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, drop_last=False)
        for images, labels, bad in loader:
            if bad and isinstance(bad[0], Undecodable):
                raise corrupt_error(bad[0].path, bad[0].reason, self.dataset.split.root.parent)
            self.bad_files.update(bad)  # distinct files, however often the epoch order met them
            if images is None:
                continue  # validation: nothing decodable in this batch
            yield to_device(images, labels, self.device, self.channels_last)


def build(cfg, dist, train_split: Split, val_split: Split, workers: int):
    d = cfg.data
    common = dict(rank=dist.rank, size=dist.size, batch=d.batch_size, seed=cfg.train.seed, workers=workers,
                  device=dist.device, channels_last=cfg.model.channels_last, skip_corrupt=d.skip_corrupt)
    train = TorchvisionLoader(train_split, train_transform(d.image_size, d.crop_scale, d.flip), train=True,
                              **common)
    val = TorchvisionLoader(val_split, val_transform(d.image_size, d.val_resize), train=False, **common)
    return train, val
