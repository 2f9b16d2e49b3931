"""Gradient buckets: every gradient is a view into one of a few flat buffers, and each buffer goes to Horovod as one
tensor as soon as its last gradient is ready (the idea of DDP's gradient_as_bucket_view, on Horovod's allreduce).

Why: Horovod's DistributedOptimizer allreduces every gradient tensor on its own, and its tensor fusion copies the
small ones into a fusion buffer and back. ResNet-50 has 161 gradients (102 MB): measured on the 2-core machine,
2 ranks, MPI, the tuned per-tensor allreduce took 26-27 ms against 17 ms for the same bytes as four 25 MB buffers
reduced in place (README, Performance). Buckets need no copy and make few large calls.

`BucketedOptimizer` has the duck type the engine uses from Horovod's DistributedOptimizer (synchronize,
skip_synchronize, step, zero_grad, param_groups, state_dict) around the plain optimizer, so checkpoints keep the
plain optimizer's format. Gradients are assigned to buckets in reverse parameter order, the order backward
produces them, so the first bucket is reduced while backward still runs. With horovod.last_bucket_mb the first
parameters' gradients, which backward produces last, get a small bucket of their own: only its allreduce is left
once backward ends, where the bucket the others leave (ResNet-50 at 25 MiB: 8.3 MiB) goes whole. Off by default: on
the one-core emulated hosts the wait after backward fell but the step did not (README, "Across hosts").
"""
from __future__ import annotations

import contextlib

import torch

from . import compression, core as dist, powersgd


def plan(sizes: list[int], bucket_bytes: int, element_bytes: int = 4, last_bytes: int = 0) -> list[list[int]]:
    """Group parameter indices, last parameter first, into buckets of at most `bucket_bytes` (a bigger tensor gets
    a bucket of its own). last_bytes > 0: the first parameters (the gradients backward produces last) go in a last
    bucket of at most that size (at least the first parameter), the others as above."""
    first = 0  # parameters 0 .. first-1 form the last bucket
    if last_bytes > 0 and sizes:
        first, used = 1, sizes[0] * element_bytes
        while first < len(sizes) and used + sizes[first] * element_bytes <= last_bytes:
            used += sizes[first] * element_bytes
            first += 1
    buckets: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in reversed(range(first, len(sizes))):
        nbytes = sizes[i] * element_bytes
        if current and used + nbytes > bucket_bytes:
            buckets.append(current)
            current, used = [], 0
        current.append(i)
        used += nbytes
    if current:
        buckets.append(current)
    if first:
        buckets.append(list(reversed(range(first))))
    return buckets


def _view(flat: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """A slice of `flat` with `like`'s shape and memory format (channels_last conv weights keep NHWC strides)."""
    n = like.numel()
    piece = flat[offset:offset + n]
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        o, c, h, w = like.shape
        return piece.view(o, h, w, c).permute(0, 3, 1, 2)
    return piece.view(like.shape)


class _OneRound:
    """A Horovod Compressor (none | fp16 | bf16) as a bucket reducer: one allreduce of the compressed bucket.

    A compressor with a narrower wire type (fp16) gets a wire buffer of its own, kept from step to step: the cast
    writes into it and the reduced values are cast straight back into the bucket. The compressor's own path would
    allocate a fresh half-size tensor and a fresh full-size one every step (each one page-faulted in anew once it
    is past malloc's mmap threshold) and copy the second into the bucket: an extra pass over the bucket and its
    page faults, for the same values (the same two roundings, so the same bits)."""

    def __init__(self, flat: torch.Tensor, compressor):
        self.flat, self.compressor, self.ctx = flat, compressor, None
        narrow = getattr(compressor, "wire_dtype", None)
        self.wire = (torch.empty(flat.shape, dtype=narrow, device=flat.device)
                     if narrow is not None and flat.is_floating_point() and narrow != flat.dtype else None)

    def begin(self) -> torch.Tensor:
        if self.wire is not None:
            return self.wire.copy_(self.flat)  # the flat bucket is contiguous: no layout to undo
        wire, self.ctx = self.compressor.compress(self.flat)
        return wire

    def advance(self, reduced: torch.Tensor) -> None:
        if self.wire is not None:
            self.flat.copy_(reduced)
            return None
        out = self.compressor.decompress(reduced, self.ctx)
        if out.data_ptr() != self.flat.data_ptr():
            self.flat.copy_(out)
        self.ctx = None
        return None


class _Bucket:
    def __init__(self, index: int, params: list[torch.nn.Parameter]):
        self.index, self.params = index, params
        dtype, device = params[0].dtype, params[0].device
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=device)
        self.views = []
        self.layout = []  # (offset, numel, shape) of each gradient in flat
        offset = 0
        for p in params:
            self.views.append(_view(self.flat, offset, p))
            self.layout.append((offset, p.numel(), tuple(p.shape)))
            offset += p.numel()
        self.grads = self.views  # what the parameters' .grad are while backward runs (see BucketedOptimizer)
        self.ready = 0
        self.handle = None   # the allreduce in flight, if any
        self.round = 0       # allreduces done this step (PowerSGD needs two)
        self.reducer = None  # begin() -> first wire; advance(reduced) -> next wire or None when done


class BucketedOptimizer:
    """Horovod-averaged gradients through flat buckets; see the module docstring."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, *, bucket_mb: float,
                 compression_name: str = "none", op: str = "average", backward_passes_per_step: int = 1,
                 powersgd_rank: int = 4, workers: int = 1, last_bucket_mb: float = 0.0):
        if op not in ("average", "prescaled"):
            raise ValueError(f"gradient buckets average gradients; op={op} needs Horovod's own optimizer")
        self.optimizer = optimizer
        self.prescaled = op == "prescaled"
        self.wire_op = "sum" if op == "prescaled" else "average"  # prescaled: the loss already carries the 1/N
        self.passes = backward_passes_per_step
        params = [p for p in model.parameters() if p.requires_grad]
        by_key: dict = {}
        for p in params:  # one dtype and device per flat buffer
            by_key.setdefault((p.dtype, p.device), []).append(p)
        self.buckets: list[_Bucket] = []
        for group in by_key.values():
            element = group[0].element_size()
            for idx in plan([p.numel() for p in group], max(1, int(bucket_mb * 2 ** 20)), element,
                            int(last_bucket_mb * 2 ** 20)):
                self.buckets.append(_Bucket(len(self.buckets), [group[i] for i in idx]))
        for b in self.buckets:
            if compression_name == "powersgd":
                # every rank draws the same initial Q for a bucket (seeded by its index)
                b.reducer = powersgd.PowerSGDBucket(b.flat, b.layout, rank=powersgd_rank, seed=b.index,
                                                    local_scale=1.0 / workers if op == "prescaled" else 1.0)
            else:
                b.reducer = _OneRound(b.flat, compression.get(compression_name))
            acc = getattr(b.reducer, "accumulate_into", b.flat)
            if acc is not b.flat:
                # PowerSGD with error feedback: backward accumulates into its error buffer (M = error + gradient
                # for free); synchronize points the .grad at flat, where the averaged gradient lands
                b.grads = [_view(acc, offset, p) for p, (offset, _, _) in zip(b.params, b.layout)]
        self._where = {}
        for b in self.buckets:
            for p, v in zip(b.params, b.grads):
                p.grad = v  # backward accumulates into the view in place (the grad exists, so no new tensor)
                self._where[p] = (b, v)
                p.register_post_accumulate_grad_hook(self._on_grad)
        self._synchronized = False
        self._skip = False

    # -- what backward calls
    def _on_grad(self, p: torch.Tensor) -> None:
        bucket, view = self._where[p]
        if p.grad is not view:
            # Someone replaced the gradient (e.g. zero_grad(set_to_none=True)): fold it back into the bucket.
            view.copy_(p.grad)
            p.grad = view
        bucket.ready += 1
        if bucket.ready == len(bucket.params) * self.passes:
            self._send(bucket, bucket.reducer.begin())
            for earlier in self.buckets[:bucket.index]:
                self._progress(earlier)  # a second round (PowerSGD) can start while backward runs

    def _send(self, bucket: _Bucket, wire: torch.Tensor) -> None:
        # Horovod: one in-place allreduce per bucket (and round), started while backward computes the next
        # bucket's gradients. The name is the same on every rank; the round keeps in-flight names unique.
        bucket.handle = dist.allreduce_async_(wire, name=f"hvdfast.bucket.{bucket.index}.{bucket.round}",
                                              op=self.wire_op)

    def _progress(self, bucket: _Bucket, block: bool = False) -> None:
        """Take the bucket through the rounds whose allreduce has finished; with block, wait for the one in
        flight first."""
        while bucket.handle is not None and (block or dist.poll(bucket.handle)):
            block = False
            reduced = dist.synchronize(bucket.handle)
            bucket.handle = None
            bucket.round += 1
            wire = bucket.reducer.advance(reduced)
            if wire is not None:
                self._send(bucket, wire)

    # -- Horovod DistributedOptimizer's duck type
    def synchronize(self) -> None:
        for bucket in self.buckets:
            if bucket.round == 0 and bucket.handle is None:
                # some gradient never arrived (unused parameter): reduce what there is
                self._send(bucket, bucket.reducer.begin())
        while True:
            for bucket in self.buckets:
                self._progress(bucket)  # start every next round that can start, so they fly together
            oldest = next((b for b in self.buckets if b.handle is not None), None)
            if oldest is None:
                break
            self._progress(oldest, block=True)
        for bucket in self.buckets:
            bucket.ready = bucket.round = 0
            if bucket.grads is not bucket.views:
                for p, v in zip(bucket.params, bucket.views):
                    p.grad = v  # the averaged gradient, for clipping and the update
        self._synchronized = True

    def forget_step(self) -> None:
        """Drop the step in progress: after an elastic reset its allreduces belong to a Horovod that is gone, and
        its gradients are partial (Horovod's own optimizer does the same in load_state_dict)."""
        for bucket in self.buckets:
            bucket.handle = None
            bucket.ready = bucket.round = 0
        self._synchronized = self._skip = False
        self.zero_grad()

    def rejoin(self, workers: int) -> None:
        """At the start of training in a new world (every rank, the joiners included): PowerSGD's Q from rank 0 and
        its error restarted in the new local units."""
        for b in self.buckets:
            if isinstance(b.reducer, powersgd.PowerSGDBucket):
                # Horovod: every rank continues from rank 0's warm start
                dist.broadcast_(b.reducer.q_wire, name=f"hvdfast.bucket.{b.index}.q")
                b.reducer.rejoin(1.0 / workers if self.prescaled else 1.0)

    @contextlib.contextmanager
    def skip_synchronize(self):
        self._skip = True
        try:
            yield
        finally:
            self._skip = False

    def step(self, closure=None):
        if not self._skip and not self._synchronized:
            self.synchronize()
        self._synchronized = False
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def zero_grad(self, set_to_none: bool = False) -> None:
        for bucket in self.buckets:  # the views stay the gradients (set_to_none is ignored on purpose)
            if bucket.grads is bucket.views:
                bucket.flat.zero_()
            else:  # PowerSGD: backward accumulates onto the error again (its uncompressed part from zero)
                bucket.reducer.zero_accumulator()
                for p, v in zip(bucket.params, bucket.grads):
                    p.grad = v

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def state_dict(self):
        return self.optimizer.state_dict()

    # -- the compressor's own state (PowerSGD: Q, shared by the ranks, and each rank's error feedback)
    @property
    def keeps_compressor_state(self) -> bool:
        """Whether the wire format carries state from step to step (PowerSGD)."""
        return any(isinstance(b.reducer, powersgd.PowerSGDBucket) for b in self.buckets)

    def compressor_state(self) -> dict | None:
        """{"q": [tensor per bucket], "error": [tensor or None per bucket]} (the live buffers), or None when the wire
        format keeps no state between steps."""
        if not self.keeps_compressor_state:
            return None
        states = [b.reducer.state() for b in self.buckets]
        return {"q": [s["q"] for s in states], "error": [s["error"] for s in states]}

    def load_compressor_state(self, q: list | None, error: list | None) -> list[str]:
        """Restore compressor_state()'s parts; a part whose bucket shapes differ from this run's (other buckets,
        rank or model) is left fresh. Returns what was restored: "q", "error"."""
        mine = self.compressor_state()
        done = []
        for name, saved in (("q", q), ("error", error)):
            if mine is None or saved is None or len(saved) != len(mine[name]) or any(
                    (a is None) != (b is None) or (a is not None and a.shape != b.shape)
                    for a, b in zip(saved, mine[name])):
                continue
            for b, t in zip(self.buckets, saved):
                b.reducer.load_state(t if name == "q" else None, t if name == "error" else None)
            done.append(name)
        return done

    def load_state_dict(self, state) -> None:
        self.optimizer.load_state_dict(state)

    def __getattr__(self, name):  # anything else (defaults, add_param_group, ...) is the plain optimizer's
        return getattr(self.__dict__["optimizer"], name)

