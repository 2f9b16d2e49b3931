"""Training and evaluation steps: no argparse, no Horovod import, no globals.

The optimizer passed in is Horovod's DistributedOptimizer; this module only relies on its documented duck type
(step, synchronize, skip_synchronize), so it reads top to bottom like a single-process loop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch


@dataclass
class Window:
    """This rank's sums over one log window (reduced across ranks by the caller, at log intervals only)."""
    loss_sum: float = 0.0     # sum of per-image losses
    correct: float = 0.0      # top-1 hits
    images: float = 0.0       # images trained on
    data_wait_s: float = 0.0  # time spent waiting for batches
    step_s: float = 0.0       # time spent in forward, backward and the update
    wall_s: float = 0.0       # wall time of the window
    nonfinite: float = 0.0    # 1 where this rank's loss was NaN/inf
    skipped: float = 0.0      # optimizer steps the fp16 loss scaler skipped (their scaled gradients overflowed)
    loss_scale: float = 0.0   # the fp16 loss scaler's scale at the window's end (0: no scaler)

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(dataclasses.astuple(self), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "Window":
        return cls(*t.tolist())


@dataclass(frozen=True)
class StepTimes:
    """One optimizer step, split where the benchmarks want it (device-synchronised when asked for)."""
    compute_s: float    # forward + backward of every micro-batch (Horovod's allreduces start during backward)
    comm_wait_s: float  # waiting in synchronize() for the allreduces that backward did not hide
    update_s: float     # unscale, clip, optimizer update, zero_grad
    step_s: float       # all of it


@dataclass(frozen=True)
class Precision:
    name: str                              # fp32 | bf16 | fp16
    device_type: str                       # cpu | cuda
    dtype: Optional[torch.dtype]           # autocast dtype, None for fp32
    scaler: Optional[torch.amp.GradScaler]  # loss scaler for fp16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def cpu_bf16_native() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (x86 with AVX512 or AMX, Arm with BF16). Elsewhere it
    emulates bf16 convolutions in software: on an AVX2-only AMD EPYC (2026-12-05, one thread, channels_last)
    ResNet-50's forward + backward under bf16 autocast took 3.5x fp32's time at 32 px, batch 8 (1.12-1.14 s
    against 0.30-0.34), 8.1x at batch 32 (4.53-4.65 s against 0.56-0.57) and 14.5x at 224 px, batch 8 (47 s
    against 3.1-3.3)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def auto_precision(device_type: str, cpu_bf16: bool) -> str:
    """What train.precision=auto trains in: fp16 AMP with a loss scaler on a GPU; on a CPU bf16 autocast where the
    CPU computes bf16 natively (no scaler needed: bf16 has fp32's range), else fp32."""
    if device_type == "cuda":
        return "fp16"
    return "bf16" if cpu_bf16 else "fp32"


def cpu_fp16_native() -> bool:
    """Whether oneDNN computes fp16 natively on this CPU (x86 with AVX512-FP16 or AMX-FP16, Arm with FP16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def emulated_note(name: str, device_type: str, cpu_bf16: bool, cpu_fp16: bool) -> Optional[str]:
    """The run log's line for a precision asked for on a CPU that only emulates it (trained as asked), or None."""
    if device_type != "cpu":
        return None
    if name == "bf16" and not cpu_bf16:
        return ("train.precision=bf16 on a CPU without native bf16 (no AVX512 / AMX): oneDNN emulates it, 3.5-15x "
                "slower than fp32 (train.precision=auto picks fp32 on this CPU)")
    if name == "fp16" and not cpu_fp16:
        return ("train.precision=fp16 on a CPU without native fp16 (no AVX512-FP16 / AMX-FP16): oneDNN emulates it, "
                "6-17x slower than fp32; it trains the GPU recipe's way (fp16 autocast, a loss scaler), to check that "
                "recipe where there is no GPU (train.precision=auto picks "
                f"{auto_precision('cpu', cpu_bf16)} on this CPU)")
    return None


def precision_for(name: str, device: torch.device) -> Precision:
    """The autocast dtype and loss scaler of train.precision (auto: `auto_precision` for this device and CPU)."""
    if name == "auto":
        name = auto_precision(device.type, cpu_bf16_native())
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    # fp16's range ends at 65504: the loss scaler keeps small gradients from flushing to zero and skips a step
    # whose scaled gradients overflowed (on a CPU too, where fp16 is asked for to check a GPU recipe)
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name=name, device_type=device.type, dtype=dtype, scaler=scaler)


def optimizer_step(optimizer, model: torch.nn.Module, prec: Precision, clip_grad_norm: float,
                   sync: Optional[Callable[[], None]] = None) -> Optional[float]:
    """One update in Horovod's documented AMP order: synchronize -> unscale -> clip -> step (no second sync).
    With `sync` (timings: it waits for the device) returns when synchronize() finished (perf_counter)."""
    if prec.scaler is None and clip_grad_norm <= 0 and sync is None:
        # Horovod: step() waits for the allreduces, then updates (Adasum's optimizer steps only this way: it
        # reduces parameter updates, and refuses skip_synchronize)
        optimizer.step()
        return None
    sync = sync or (lambda: None)
    # Horovod: finish the gradient allreduce before unscaling or clipping the averaged gradients.
    optimizer.synchronize()
    sync()
    t_synced = time.perf_counter()
    if prec.scaler is not None:
        prec.scaler.unscale_(optimizer)
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    # Horovod: gradients are already reduced; don't let step() synchronize again.
    with optimizer.skip_synchronize():
        if prec.scaler is not None:
            prec.scaler.step(optimizer)
        else:
            optimizer.step()
    if prec.scaler is not None:
        prec.scaler.update()
    return t_synced


@contextlib.contextmanager
def scheduled_gc(every: int):
    """Python's cyclic garbage collector on a step schedule while training; yields `after_step(step)`.

    Left to itself the collector runs whenever allocations cross its thresholds, at a different moment on every
    rank, and a full collection walks every object the process holds (the model, the data loaders, the libraries:
    about 400,000 objects in a ResNet-50 worker, 110-220 ms measured on this machine's CPU). Any rank's pause
    delays every rank's next allreduce, so with N ranks a step waits for the union of N independent pauses.
    Following torchtitan (training.gc_freq) and Megatron-LM (--manual-gc): the objects alive when training starts
    are frozen out of the collector's reach (gc.freeze), automatic collection is off, and a collection of what was
    created since runs every `every` optimizer steps, at the same step on every rank. Everything is restored on
    exit. every <= 0: the collector is left as it is.
    """
    if every <= 0:
        yield lambda step: None
        return
    enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()

    def after_step(step: int) -> None:
        if step % every == 0:
            gc.collect()

    try:
        yield after_step
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def train_epoch(model: torch.nn.Module, optimizer, batches: Iterable, *, steps: int, first_step: int,
                lr_fn: Callable[[int], float], criterion: torch.nn.Module, prec: Precision,
                accumulation: int = 1, loss_divisor: int = 1, clip_grad_norm: float = 0.0,
                log_every: int = 20,
                on_log: Callable[[int, Window], None] = lambda step, window: None,
                on_step: Callable[[int], Optional[bool]] = lambda step: None,
                step_times: Optional[list] = None) -> int:
    """Run up to `steps` optimizer steps (each of `accumulation` micro-batches). Returns the next global step.

    on_log(step, window) gets this rank's Window every `log_every` steps and at the end; the caller reduces it
    across ranks (the only cross-rank traffic besides the gradients). on_step(step) runs after every optimizer
    step; when it returns True the epoch ends there (after logging the partial window): the caller must make every
    rank return True at the same step, since on_log is collective. With `step_times` (a list), every step's
    StepTimes is appended, the device synchronised at each boundary (benchmarks; training leaves it None).
    """
    model.train()
    step = first_step
    done = 0
    window = Window()
    dev_sums = None  # loss_sum, correct on the device: no host sync per step
    t_window = t_prev = time.perf_counter()
    sync = (torch.cuda.synchronize if step_times is not None and torch.cuda.is_available() else lambda: None)
    t_step = None
    micro = 0
    stop = False
    # fp16: the scale the loss scaler had before each step; a step that halved it was skipped. (GradScaler.step has
    # already waited for the device to say whether the gradients overflowed, so reading the scale costs nothing.)
    scale = prec.scaler.get_scale() if prec.scaler is not None else 0.0
    for images, labels in batches:
        t_batch = time.perf_counter()
        t_step = t_batch if micro == 0 else t_step
        if micro == 0:
            lr = lr_fn(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
        with prec.autocast():
            logits = model(images)
            loss = criterion(logits, labels)
        divisor = accumulation * loss_divisor  # micro-batches averaged locally; workers (op=prescaled) on the wire
        scaled = loss / divisor if divisor > 1 else loss
        if prec.scaler is not None:
            prec.scaler.scale(scaled).backward()
        else:
            scaled.backward()  # Horovod: hooks start allreducing each gradient as soon as it is ready
        with torch.no_grad():
            n = labels.shape[0]
            sums = torch.stack([loss.detach().float() * n, (logits.argmax(1) == labels).sum().float()])
            dev_sums = sums if dev_sums is None else dev_sums + sums
        window.images += labels.shape[0]
        micro += 1
        if micro == accumulation:
            micro = 0
            sync()
            t_backward = time.perf_counter()
            t_synced = optimizer_step(optimizer, model, prec, clip_grad_norm, None if step_times is None else sync)
            optimizer.zero_grad()  # Horovod: its zero_grad takes no arguments (torch default: set_to_none)
            if prec.scaler is not None:
                scale, before = prec.scaler.get_scale(), scale
                window.skipped += scale < before
            sync()
            if step_times is not None:
                t_end = time.perf_counter()
                step_times.append(StepTimes(compute_s=t_backward - t_step, comm_wait_s=t_synced - t_backward,
                                            update_s=t_end - t_synced, step_s=t_end - t_step))
            step += 1
            done += 1
            stop = bool(on_step(step))
        t_now = time.perf_counter()
        window.data_wait_s += t_batch - t_prev
        window.step_s += t_now - t_batch
        t_prev = t_now
        if micro == 0 and (done % log_every == 0 or done == steps or stop):
            host = dev_sums.double().cpu()
            window.loss_sum, window.correct = float(host[0]), float(host[1])
            window.nonfinite = 0.0 if torch.isfinite(host[0]) else 1.0
            window.wall_s = t_now - t_window
            window.loss_scale = scale
            on_log(step, window)
            window = Window()
            dev_sums = None
            t_window = t_prev = time.perf_counter()
        if micro == 0 and (done >= steps or stop):
            break
    return step


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, prec: Precision,
             criterion: torch.nn.Module) -> torch.Tensor:
    """This rank's sums over its validation shard: [loss_sum, top1_correct, top5_correct, images]."""
    model.eval()
    sums = None
    for images, labels in batches:
        with prec.autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top5 = logits.topk(k, dim=1).indices
        hit = top5 == labels[:, None]
        batch = torch.stack([criterion(logits, labels) * labels.shape[0], hit[:, 0].sum().float(),
                             hit.any(dim=1).sum().float(), torch.tensor(float(labels.shape[0]),
                                                                         device=logits.device)])
        sums = batch if sums is None else sums + batch
    if sums is None:
        return torch.zeros(4, dtype=torch.float64)
    return sums.double().cpu()
