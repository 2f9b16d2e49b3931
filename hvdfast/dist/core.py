"""Horovod's process group: the only module that imports horovod.torch (init, DistInfo, collectives, elastic).

Everything else takes a DistInfo and calls the helpers here, so the rest of the code reads (and tests) without a
launcher, and Horovod's knobs are set in one place, before hvd.init() reads them.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..config import ConfigError, HorovodConfig
from ..knobs import horovod_env  # noqa: F401  (re-exported: dist.horovod_env)

_hvd = None  # horovod.torch, once init() ran


@dataclass(frozen=True)
class DistInfo:
    rank: int             # global rank: shards the data (shard_id = rank)
    local_rank: int       # rank on this host: picks the GPU (device_id = local_rank)
    size: int             # number of workers
    local_size: int       # workers on this host
    cores_per_rank: int   # CPU cores this worker owns (torch threads, DALI threads, loader workers)
    device: torch.device  # cuda:<local_rank> where there is a GPU, else cpu
    controller: str       # mpi | gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def cores_owned(local_size: int) -> int:
    """Cores this worker may use: its CPU affinity if a launcher bound it, else an equal share of the host."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    total = os.cpu_count() or affinity
    if affinity < total:  # mpirun --bind-to core / SLURM cpusets already gave us our share
        return max(1, affinity)
    return max(1, total // max(1, local_size))


def threads_note(threads: int, owned: int) -> str | None:
    """The run log's line for more torch threads (train.threads) than the cores this worker owns, or None."""
    if threads <= owned:
        return None
    return (f"train.threads={threads} on the {owned} core(s) this worker owns: torch's threads then wait on each "
            f"other (4 threads on 2 cores trained the digits 50x slower on a 2-core machine); train.threads=0 "
            f"takes one per owned core")


def controller_problem(environ: Mapping[str, str], mpi_built: bool) -> str | None:
    """Why Horovod 0.28.1 would crash on this process's choice of controller and CPU operations (Horovod's own
    HOROVOD_CONTROLLER / HOROVOD_CPU_OPERATIONS, which launchers pass through), or None.

    Horovod parses the two independently, but only the pairs its launchers set work: under the MPI controller
    HOROVOD_CPU_OPERATIONS=gloo dies with a segmentation fault in the first allreduce (the process set's Gloo
    context is never initialised; Gloo's controller initialises it), and HOROVOD_CONTROLLER=gloo under mpirun, with
    no horovodrun rendezvous to meet at, aborts in MPI; a value it does not know aborts the process (all seen with
    Horovod 0.28.1, 2 ranks, 2026-11-27). horovodrun --gloo sets both itself."""
    controller = (environ.get("HOROVOD_CONTROLLER") or ("mpi" if mpi_built else "gloo")).lower()
    operations = (environ.get("HOROVOD_CPU_OPERATIONS") or "").lower()
    for name, value, known in (("HOROVOD_CONTROLLER", controller, ("mpi", "gloo")),
                               ("HOROVOD_CPU_OPERATIONS", operations, ("", "mpi", "gloo", "ccl"))):
        if value not in known:  # Horovod throws from its background thread: the process aborts
            return (f"{name}={environ.get(name)} is not one Horovod knows ({', '.join(k for k in known if k)}); "
                    f"unset it to use the launcher's choice.")
    if controller == "mpi" and operations == "gloo":
        return ("HOROVOD_CPU_OPERATIONS=gloo with Horovod's MPI controller crashes Horovod 0.28.1 (a segmentation "
                "fault in the first allreduce): unset HOROVOD_CPU_OPERATIONS, or run on Gloo throughout "
                "(horovodrun --gloo, or hvdfast launch ... --controller gloo).")
    mpi_size = environ.get("OMPI_COMM_WORLD_SIZE") or environ.get("PMI_SIZE") or "1"
    if (controller == "gloo" and "HOROVOD_GLOO_RENDEZVOUS_ADDR" not in environ and mpi_size.isdigit()
            and int(mpi_size) > 1):
        return ("HOROVOD_CONTROLLER=gloo under mpirun: Horovod's Gloo controller meets at horovodrun's rendezvous, "
                "which mpirun does not start (Horovod aborts in MPI). Unset HOROVOD_CONTROLLER to use MPI, or "
                "launch with horovodrun --gloo (hvdfast launch ... --controller gloo).")
    return None


class DeviceError(RuntimeError):
    """The workers do not fit the node's GPUs (a user error: one message, from rank 0)."""


# Gloo's transport failing under a collective ("[…/gloo/transport/tcp/pair.cc:589] Read error …: Connection reset by
# peer", "… Timed out waiting 30000ms for recv operation"): its own messages start with the source file that threw.
_GLOO_TRANSPORT = re.compile(r"gloo/transport/\w+/\w+\.cc:\d+\]")


def peer_lost(exc: BaseException | None) -> bool:
    """Whether `exc` is Horovod shut down under this process, or its connection to another worker failed: another
    worker exited (an error of its own, a kill) or the network to it did, and every collective after that fails
    here, inside backward's hooks or at the step. Its own message, Horovod's line or the launcher's report says
    which worker and why. The collective in flight when a worker is killed can fail with Gloo's own error (a reset
    connection) rather than "shut down" (seen in 1 of 2 runs of tests/test_resume.py's kill, under load). Horovod's
    other internal errors (mismatched tensors, ...) are not this: they carry their own message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "Horovod has been shut down" in str(exc) or _GLOO_TRANSPORT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def gpu_problem(local_size: int, gpus: int, nccl: bool) -> str | None:
    """Why `local_size` workers cannot share this node's `gpus` GPUs, or None when they can."""
    if gpus == 0 or local_size <= gpus or not nccl:
        return None  # no GPU, one GPU each, or Horovod without NCCL (stages CUDA tensors through the CPU)
    return (f"{local_size} workers on this node but {gpus} GPU(s): Horovod's NCCL allreduce needs one GPU per "
            f"worker (two ranks on one GPU fail in ncclCommInitRank). Start at most {gpus} worker(s) per node "
            f"(horovodrun -np {gpus} -H localhost:{gpus}; -H host:{gpus} per host), or train on the CPU with "
            f"CUDA_VISIBLE_DEVICES= (empty).")


def _output_folders(environ: Mapping[str, str]) -> None:
    """Make the folders of the files Horovod is asked to write: the timeline (horovod.timeline, HOROVOD_TIMELINE;
    DYNAMIC names no file) and the autotuner's log (horovod.autotune_log, HOROVOD_AUTOTUNE_LOG). Horovod opens them
    on rank 0 in hvd.init() and, where the folder is missing, trains on without them (the timeline with an error
    line, the log silently)."""
    for var, key in (("HOROVOD_TIMELINE", "horovod.timeline"), ("HOROVOD_AUTOTUNE_LOG", "horovod.autotune_log")):
        path = environ.get(var, "")
        if not path or (var == "HOROVOD_TIMELINE" and path == "DYNAMIC"):
            continue
        folder = Path(path).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot make the folder {folder} for {path} ({var}): {exc.strerror}; set {key} to a "
                              f"writable path.") from None


def init(cfg: HorovodConfig | None = None, *, pin_threads: bool = True, threads: int = 0,
         elastic: bool = False) -> DistInfo:
    """Set Horovod's knobs (cfg=None leaves Horovod's own defaults), hvd.init(), pin the device and, unless
    pin_threads is False, the CPU threads of this worker."""
    global _hvd
    if cfg is not None:
        env = horovod_env(cfg)
        if elastic:
            # (Horovod 0.28.1 segfaulted in the reset's hvd.init() with both HOROVOD_FUSION_THRESHOLD and
            # HOROVOD_CYCLE_TIME set: fixed by the build patch, launch/install.sh, "parameter manager".)
            # Horovod's response cache (names -> cached responses) is warm on survivors and cold on a worker
            # that joins: their first collectives after the reset disagreed and a survivor aborted in Gloo
            # ("op.preamble.length <= op.nbytes"). Without the cache a scale-up goes through.
            env["HOROVOD_CACHE_CAPACITY"] = "0"
        os.environ.update(env)
    import horovod.torch as hvd  # Horovod: the only import of it in hvdfast

    problem = controller_problem(os.environ, bool(hvd.mpi_built()))
    if problem:  # before hvd.init(), which would crash on it
        raise ConfigError(problem)
    _output_folders(os.environ)
    hvd.init()
    _hvd = hvd
    if cfg is not None and cfg.op == "adasum" and not hvd.mpi_enabled():
        # Horovod 0.28.1 has no Adasum over Gloo ("No Adasum operation enabled" at the first allreduce)
        raise ConfigError("horovod.op=adasum needs Horovod's MPI controller: launch with horovodrun --mpi or "
                          "mpirun (this job runs on Gloo), or use another horovod.op.")
    cores = threads or cores_owned(hvd.local_size())
    if pin_threads:
        # Horovod: one worker per core share; oversubscribed intra-op threads cost 3x on small machines.
        torch.set_num_threads(cores)
    if torch.cuda.is_available():
        problem = gpu_problem(hvd.local_size(), torch.cuda.device_count(), bool(hvd.nccl_built()))
        if problem:
            raise DeviceError(problem)
        # Horovod: one GPU per process, chosen by local rank (never by global rank).
        torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
    return current(cores)


def current(cores: int | None = None) -> DistInfo:
    """DistInfo for the current world (after an elastic reset the rank and size may have changed).
    cores: the CPU cores this worker owns (default: its torch thread count)."""
    hvd = _h()
    cores = cores or torch.get_num_threads()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return DistInfo(rank=hvd.rank(), local_rank=hvd.local_rank(), size=hvd.size(), local_size=hvd.local_size(),
                    cores_per_rank=cores, device=device, controller="mpi" if hvd.mpi_enabled() else "gloo")


def elastic_run(fn):
    """Horovod's elastic retry loop: restore the last commit and re-rendezvous when workers come or go."""
    return _h().elastic.run(fn)


def _h():
    """horovod.torch, after init() (for the modules of this package)."""
    if _hvd is None:
        raise RuntimeError("hvdfast.dist.init() must be called first")
    return _hvd


def broadcast_model(model: torch.nn.Module, root: int = 0) -> None:
    """Broadcast parameters and buffers from root. Call before converting the model to channels_last:
    Horovod refuses non-contiguous (NHWC-strided) tensors."""
    hvd = _h()
    # Horovod: every rank starts from rank 0's weights (and BN running statistics).
    hvd.broadcast_parameters(model.state_dict(), root_rank=root)


def broadcast_(tensor: torch.Tensor, name: str, root: int = 0) -> None:
    """Overwrite `tensor` with root's, in place (contiguous tensors only)."""
    _h().broadcast_(tensor, root_rank=root, name=name)


def allreduce_sum(values: Iterable[float] | torch.Tensor, name: str) -> torch.Tensor:
    """Sum a small float64 vector over all ranks (metrics; called at log intervals, not every step)."""
    hvd = _h()
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    # Horovod: one small synchronous allreduce for all metrics at once.
    return hvd.allreduce_(t, op=hvd.Sum, name=name)


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running mean / var) over ranks, in place.

    Each rank's BN statistics come from its own shard; without this, a sharded validation would score a different
    model on every rank, and the checkpoint would hold rank 0's statistics only (timm's distribute_bn does this).
    """
    hvd = _h()
    pending = []
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            flat = buf.detach().contiguous()
            # Horovod: all buffer averages in flight at once, then one wait.
            pending.append((buf, flat, hvd.allreduce_async_(flat, op=hvd.Average, name=f"buffer.{name}")))
    for buf, flat, handle in pending:
        hvd.synchronize(handle)
        if flat.data_ptr() != buf.data_ptr():
            buf.copy_(flat)


def allreduce_async_(tensor: torch.Tensor, name: str, op: str = "average"):
    """Start an in-place average (or sum) of a contiguous tensor; pass the handle to synchronize()."""
    hvd = _h()
    return hvd.allreduce_async_(tensor, op=hvd.Sum if op == "sum" else hvd.Average, name=name)


def poll(handle) -> bool:
    """Whether the allreduce behind `handle` has finished (synchronize() then returns at once)."""
    return _h().poll(handle)


def synchronize(handle) -> torch.Tensor:
    return _h().synchronize(handle)


def allreduce_mean(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Average a tensor over all ranks (out of place)."""
    hvd = _h()
    # Horovod: average = sum / size, done by Horovod's postscale.
    return hvd.allreduce(tensor.contiguous(), op=hvd.Average, name=name)


def allgather_object(obj, name: str):
    # Horovod: pickled gather, for rare small things (sample ids in tests, per-rank status).
    return _h().allgather_object(obj, name=name)


def broadcast_object(obj, root: int = 0, name: str = "obj"):
    """Every rank gets root's `obj` (pickled; tensors in it arrive bit for bit). Horovod's own
    hvd.broadcast_object does the same two broadcasts (the size, then the bytes) but fills its byte tensor through
    torch.ByteTensor(bytearray(...)), one Python object per byte: 6.8 s for a 48 MB pickle on this CPU, and a
    resumed ResNet-18 run (its checkpoint, 90 MB) waited 13 s in it before the first step. torch.frombuffer wraps
    the same bytes in 0.04 s."""
    hvd = _h()
    if hvd.size() == 1:
        return obj
    if hvd.rank() == root:
        data = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
    else:
        size = torch.zeros(1, dtype=torch.int64)
    hvd.broadcast_(size, root_rank=root, name=f"{name}.size")
    if hvd.rank() != root:
        data = torch.empty(int(size), dtype=torch.uint8)
    hvd.broadcast_(data, root_rank=root, name=f"{name}.bytes")
    return obj if hvd.rank() == root else pickle.loads(data.numpy().data)


def barrier() -> None:
    _h().barrier()


def shutdown() -> None:
    if _hvd is not None:
        _hvd.shutdown()


def build_info() -> dict:
    """What this Horovod was built with (for doctor and the run's versions file)."""
    import horovod
    import horovod.torch as hvd
    return {
        "version": horovod.__version__,
        "frameworks": {"pytorch": True},
        "controllers": {"mpi": bool(hvd.mpi_built()), "gloo": bool(hvd.gloo_built())},
        "tensor_operations": {"nccl": bool(hvd.nccl_built()), "mpi": bool(hvd.mpi_built()),
                              "gloo": bool(hvd.gloo_built()), "ddl": bool(hvd.ddl_built()),
                              "ccl": bool(hvd.ccl_built())},
        "cuda": bool(hvd.cuda_built()),
        "hvdfast_build_patch": build_patched(),
    }


def build_patched() -> bool:
    """Whether this Horovod carries launch/install.sh's build patch (README, "The Horovod build patch") as this
    checkout writes it: told by the function its Python part adds to horovodrun's process handling and by the
    newest C++ part's function in the torch extension (the idle wait: a build of an older patch lacks it)."""
    import ctypes

    from horovod.runner.common.util import safe_shell_exec
    from horovod.torch import mpi_lib_v2
    extension = ctypes.CDLL(mpi_lib_v2.__file__)  # loaded already by horovod.torch: the same handle
    return (hasattr(safe_shell_exec, "_wait_without_reaping")
            and hasattr(extension, "_ZN7horovod6common27HvdfastWakeBackgroundThreadEv"))
