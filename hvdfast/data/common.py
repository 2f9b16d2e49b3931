"""What every backend yields: a Loader per split with steps_per_epoch and epoch(epoch, skip) -> (images, labels)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Loader(Protocol):
    steps_per_epoch: int   # batches this rank yields per epoch (identical on every rank for training)
    images: int            # images in the split (all ranks together, before padding)
    bad_files: set         # undecodable files this rank met and skipped so far (data.skip_corrupt); the run's
                           # count is the union over ranks

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of one epoch; `skip` batches already consumed (mid-epoch resume) are not produced."""


@dataclass
class Data:
    train: Loader
    val: Loader
    num_classes: int
    backend: str
    notes: list[str] = field(default_factory=list)
    classes: tuple[str, ...] = ()   # the class names, in label order (none for synthetic data)


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)
