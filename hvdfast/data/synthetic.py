"""Synthetic backend: fixed random tensors already on the device (benchmarks: no decode, no copy)."""
from __future__ import annotations

import torch


class SyntheticLoader:
    bad_files: set = frozenset()

    def __init__(self, *, images: int, classes: int, image_size: int, batch: int, size: int, seed: int,
                 device: torch.device, channels_last: bool, dtype=torch.float32):
        self.images = images
        self.steps_per_epoch = max(1, images // (batch * size))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, image_size, image_size, generator=g, dtype=dtype)
        self.x = x.to(device).contiguous(memory_format=torch.channels_last) if channels_last else x.to(device)
        self.y = torch.randint(0, classes, (batch,), generator=g).to(device)

    def epoch(self, epoch: int, skip: int = 0):
        for _ in range(self.steps_per_epoch - skip):
            yield self.x, self.y


def build(cfg, dist):
    d = cfg.data
    kw = dict(classes=d.synthetic_classes, image_size=d.image_size, batch=d.batch_size, size=dist.size,
              seed=cfg.train.seed + dist.rank, device=dist.device, channels_last=cfg.model.channels_last)
    return SyntheticLoader(images=d.synthetic_images, **kw), SyntheticLoader(images=d.batch_size * dist.size, **kw)
