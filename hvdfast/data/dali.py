"""NVIDIA DALI backend: JPEG decoding on the GPU (nvJPEG, device="mixed") or on the CPU, sharded by global rank.

Sharding follows the rule DALI's own ResNet-50 example gets wrong on several nodes: shard_id = rank,
num_shards = size, device_id = local_rank. The training file list is permuted by (seed, epoch) before DALI shards
it, so the order is a function of the seed and the epoch alone (a resumed run replays it) and every rank sees a
different random subset each epoch; pad_last_batch + LastBatchPolicy.FILL give every rank the same number of
full batches (the last one padded by repeating a sample), so every image is trained on each epoch and no rank
waits at epoch end. Validation keeps the file order and uses LastBatchPolicy.PARTIAL with padding
removed, so every image is counted exactly once across ranks.

A training epoch's pipeline (file list, decoders, nvJPEG buffers, first batches) is built in a background thread
while the previous epoch trains: on an H100 a new pipeline cost 0.5 s at each epoch start (4-6 s for the first
two), which at a 32K global batch (39 steps per epoch) would be a tenth of the epoch. Nothing is built past the
run's last epoch, and every builder thread is joined before the interpreter finalizes, whether or not its loader
still exists (`_BUILDERS`, joined by the exit hook before DALI's own hook shuts the pipelines down).

Why every thread, not only the live loaders' (the rare "terminate called without an active exception" at a rank's
exit that CI met three times, found 2026-11-27 from core dumps): a loader dropped while its next epoch is building
lives on only in the builder's closure. When the build ends, the thread itself frees the loader, then the built
iterator: its pipeline and first batch, torch tensors whose deallocation releases the GIL. Meanwhile the main
thread, finding no live loader to close, went on into the interpreter's finalization; the builder, taking the GIL
back, was ended by Python with pthread_exit, whose forced unwind through torch's noexcept deallocator is
std::terminate. Three cores of three such aborts (3 of 47 runs of tests/parallel/shards.py, which drops its loaders
at return, across two namespace hosts) showed exactly that stack.
"""
from __future__ import annotations

import atexit
import math
import threading
import weakref
from pathlib import Path

import torch

from .common import IMAGENET_MEAN, IMAGENET_STD
from .folder import DataError, Split, shard_indices
from .pack import read_meta
from .torchvision import corrupt_error

READER = "Reader"
_LOADERS: weakref.WeakSet = weakref.WeakSet()  # closed by _close_loaders at exit
_BUILDERS: set[threading.Thread] = set()        # builder threads nobody has joined yet, their loaders alive or not
JOIN_TIMEOUT_S = 120  # a build takes seconds at most; a hung GPU must not hang the exit


def _close_loaders() -> None:
    for loader in list(_LOADERS):
        loader.close()
    # A dropped loader's builder frees that loader and its pipeline itself: it must be done before finalization.
    for thread in list(_BUILDERS):
        _join(thread)


def _join(thread: threading.Thread) -> None:
    thread.join(timeout=JOIN_TIMEOUT_S)
    if not thread.is_alive():  # joined: its run() has returned, and with it everything its closure held
        _BUILDERS.discard(thread)


def _track(loader) -> None:
    import nvidia.dali.pipeline  # noqa: F401  (registers DALI's exit hook, which shuts down live pipelines)
    if not _LOADERS:
        atexit.unregister(_close_loaders)
        atexit.register(_close_loaders)  # after DALI's hook, so it runs before it (exit hooks run last-in first)
    _LOADERS.add(loader)


class FolderSource:
    """An ImageFolder split read by fn.readers.file, over a file list permuted by (seed, epoch)."""

    def __init__(self, split: Split, train: bool, seed: int, skip_corrupt: bool, rank: int = 0, size: int = 1):
        self.split, self.train, self.seed = split, train, seed
        self.valid = list(range(len(split)))
        self.bad_files: set[str] = set()
        if skip_corrupt:
            # DALI cannot skip a file mid-epoch (it would stop with the batch), so undecodable files leave the file
            # list first. Each rank decodes every size-th file, and the ranks exchange what they found.
            from .check import undecodable
            self.bad_files = {str(p) for p, _ in undecodable(split.path(i) for i in range(rank, len(split), size))}
            bad = self.bad_files
            if size > 1:
                from .. import dist
                # Horovod: every rank needs the same file list (DALI shards it by rank).
                found = dist.allgather_object(sorted(self.bad_files), name=f"dali.check.{split.root.name}")
                bad = set().union(*map(set, found))
            self.valid = [i for i in range(len(split)) if str(split.path(i)) not in bad]
        self.images = len(split)
        self.usable = len(self.valid)

    def order(self, epoch: int) -> list[int]:
        if not self.train:
            return self.valid
        # The same global permutation on every rank (shard_indices with size 1); DALI then shards it by rank.
        return [self.valid[i] for i in shard_indices(len(self.valid), 0, 1, self.seed, epoch, shuffle=True)]

    def reader(self, epoch: int, rank: int, size: int):
        from nvidia.dali import fn
        order = self.order(epoch)
        files = [self.split.files[i] for i in order]
        labels = [self.split.labels[i] for i in order]
        return lambda: fn.readers.file(file_root=str(self.split.root), files=files, labels=labels, name=READER,
                                       shard_id=rank, num_shards=size, random_shuffle=False, pad_last_batch=True)

    def diagnose(self, exc: Exception):
        """DALI's decode errors do not always name the file: find it, and say what to do."""
        from .check import undecodable
        bad = undecodable(self.split.path(i) for i in self.valid)
        return corrupt_error(*bad[0], self.split.root.parent) if bad else exc


class ShardSource:
    """WebDataset tar shards (hvdfast data pack) read by fn.readers.webdataset with DALI's index files.
    Samples were shuffled at pack time; DALI's shuffle buffer, seeded per epoch, reorders them within a rank's
    contiguous block, and the blocks rotate between ranks every epoch (as DALI's iterator does by default)."""

    def __init__(self, split_dir: Path, train: bool, seed: int):
        meta = read_meta(split_dir)
        self.paths = [str(split_dir / s) for s in meta["shards"]]
        self.index_paths = [p[:-4] + ".idx" for p in self.paths]
        self.train, self.seed = train, seed
        self.images = self.usable = int(meta["samples"])
        self.bad_files: set[str] = set()

    def reader(self, epoch: int, rank: int, size: int):
        from nvidia.dali import fn, types
        return lambda: fn.readers.webdataset(
            paths=self.paths, index_paths=self.index_paths, ext=["jpg", "label"],
            dtypes=[types.UINT8, types.INT64], name=READER, shard_id=(rank + epoch) % size, num_shards=size,
            random_shuffle=self.train, seed=self.seed * 1_000_003 + epoch, pad_last_batch=True)

    def diagnose(self, exc: Exception):
        return exc


def _pipeline(read, *, train: bool, batch: int, threads: int, image_size: int, val_resize: int, crop_scale,
              flip: bool, gpu: bool, device_id, seed: int, hw_decoder_load: float):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=device_id if gpu else None, seed=seed,
                  prefetch_queue_depth=2)
    def pipe():
        jpegs, lab = read()
        decode_kw = {}
        if gpu:
            # nvJPEG scratch sizes of NVIDIA's ResNet-50 example: avoids reallocations during the first epochs.
            decode_kw = dict(device_memory_padding=211_025_920, host_memory_padding=140_544_512,
                             # the JPEGs' share for the hardware decoder, off the SMs that train
                             hw_decoder_load=hw_decoder_load)
        dev = "mixed" if gpu else "cpu"
        if train:
            images = fn.decoders.image_random_crop(jpegs, device=dev, output_type=types.RGB,
                                                   random_area=list(crop_scale),
                                                   random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=100,
                                                   **decode_kw)
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
            mirror = fn.random.coin_flip(probability=0.5) if flip else 0
        else:
            images = fn.decoders.image(jpegs, device=dev, output_type=types.RGB, **decode_kw)
            images = fn.resize(images, resize_shorter=val_resize)
            mirror = 0
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT16 if gpu else types.FLOAT, output_layout="HWC",
            crop=(image_size, image_size), mean=[m * 255 for m in IMAGENET_MEAN],
            std=[s * 255 for s in IMAGENET_STD], mirror=mirror)
        if gpu:
            lab = lab.gpu()
        return images, lab

    return pipe()


class DaliLoader:
    def __init__(self, source, *, train: bool, rank: int, size: int, batch: int, seed: int, threads: int,
                 image_size: int, val_resize: int, crop_scale, flip: bool, device: torch.device,
                 channels_last: bool, epochs: int, hw_decoder_load: float):
        self.source, self.train, self.rank, self.size, self.seed = source, train, rank, size, seed
        self.epochs = epochs  # the run's epoch count: no pipeline is built ahead for an epoch past it
        self.kw = dict(batch=batch, threads=threads, image_size=image_size, val_resize=val_resize,
                       crop_scale=crop_scale, flip=flip, gpu=device.type == "cuda",
                       device_id=device.index if device.type == "cuda" else None, hw_decoder_load=hw_decoder_load)
        self.device, self.channels_last = device, channels_last
        self.images, self.bad_files = source.images, source.bad_files
        # DALI shards contiguously; with pad_last_batch every shard is padded to the largest one's full batches.
        self.steps_per_epoch = math.ceil(math.ceil(source.usable / size) / batch)
        # Validation smaller than the world (DALI refuses more shards than samples): its first `usable` ranks read
        # it, an image or more each, and the others evaluate nothing (zeros in the sums every rank adds up).
        self.shards = size if train else max(1, min(size, source.usable))
        self._val_iter = None
        self._next = None  # (epoch, thread, result box) of the training pipeline being built ahead
        _track(self)

    def _iterator(self, epoch: int):
        from nvidia.dali.plugin.pytorch import DALIClassificationIterator, LastBatchPolicy
        pipe = _pipeline(self.source.reader(epoch, self.rank, self.shards), train=self.train,
                         seed=self.seed * 1_000_003 + epoch * 1_009 + self.rank, **self.kw)
        pipe.build()
        policy = LastBatchPolicy.FILL if self.train else LastBatchPolicy.PARTIAL
        return DALIClassificationIterator(pipe, reader_name=READER, last_batch_policy=policy, auto_reset=True)

    def _prefetch(self, epoch: int) -> None:
        """Start building `epoch`'s training iterator (which also decodes its first batches) in a thread."""
        box: dict = {}

        def build():
            try:
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)  # the torch side of DALI's iterator uses the current device
                box["it"] = self._iterator(epoch)
            except BaseException as exc:  # handed to the training thread, which raises it
                box["error"] = exc

        for done in [t for t in _BUILDERS if not t.is_alive()]:
            _BUILDERS.discard(done)  # finished builders of loaders dropped earlier
        thread = threading.Thread(target=build, name=f"hvdfast-dali-epoch-{epoch}", daemon=True)
        _BUILDERS.add(thread)
        thread.start()
        self._next = (epoch, thread, box)

    def _take(self, epoch: int):
        """`epoch`'s training iterator: the one built ahead if it is for this epoch, else a new one."""
        ahead, self._next = self._next, None
        if ahead is not None:
            _join(ahead[1])  # even when unused: a pipeline still building must not outlive its loader's control
        if ahead is None or ahead[0] != epoch:
            return self._iterator(epoch)  # first epoch, a resume, or an epoch skipped: nothing ahead to use
        _, thread, box = ahead
        if thread.is_alive():
            raise DataError(f"DALI's pipeline for epoch {epoch} was still building after {JOIN_TIMEOUT_S} s: a hung GPU "
                            f"or file system? (hvdfast doctor checks the GPU; data.dir must be readable on every node)")
        if "error" in box:
            raise box["error"]
        return box["it"]

    def close(self) -> None:
        """Join the pipeline being built ahead and let go of the pipelines this loader holds (idempotent).

        At exit DALI's own hook then shuts down whatever pipelines are left, in the main thread."""
        ahead, self._next, self._val_iter = self._next, None, None
        if ahead is not None:
            _join(ahead[1])

    def epoch(self, epoch: int, skip: int = 0):
        if self.rank >= self.shards:
            return  # validation: no image left for this rank
        try:
            if self.train:
                it = self._take(epoch)
                if epoch + 1 < self.epochs:
                    self._prefetch(epoch + 1)
            else:
                self._val_iter = self._val_iter or self._iterator(0)
                it = self._val_iter
            for i, out in enumerate(it):
                if i < skip:
                    continue  # mid-epoch resume: the order is replayed, consumed batches are dropped
                images = out[0]["data"].permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last, no copy
                if not self.channels_last:
                    images = images.contiguous()
                if images.dtype != torch.float32 and self.device.type != "cuda":
                    images = images.float()
                labels = out[0]["label"].reshape(-1).long()
                yield images, labels.to(self.device, non_blocking=True)
        except RuntimeError as exc:
            if "decod" in str(exc).lower() or "jpeg" in str(exc).lower():
                raise self.source.diagnose(exc) from None
            raise


def build(cfg, dist, train_split: Split | None, val_split: Split | None, threads: int, collectives: bool = True):
    """Loaders over an ImageFolder (train_split / val_split) or, when they are None, over packed shards."""
    d = cfg.data
    common = dict(rank=dist.rank, size=dist.size, batch=d.batch_size, seed=cfg.train.seed, threads=threads,
                  image_size=d.image_size, val_resize=d.val_resize, crop_scale=tuple(d.crop_scale), flip=d.flip,
                  device=dist.device, channels_last=cfg.model.channels_last, epochs=math.ceil(cfg.train.epochs),
                  hw_decoder_load=d.hw_decoder_load)
    if train_split is None:
        if d.skip_corrupt:
            raise DataError("data.skip_corrupt is not supported for packed shards; run 'hvdfast data check' on "
                            "the folder and re-pack it.")
        root = Path(d.dir)
        sources = ShardSource(root / "train", True, cfg.train.seed), ShardSource(root / "val", False, 0)
    else:
        # the skip_corrupt check split over the ranks (or, without collectives, all of it on every rank)
        part = (dist.rank, dist.size) if collectives else (0, 1)
        sources = (FolderSource(train_split, True, cfg.train.seed, d.skip_corrupt, *part),
                   FolderSource(val_split, False, 0, d.skip_corrupt, *part))
    return DaliLoader(sources[0], train=True, **common), DaliLoader(sources[1], train=False, **common)
