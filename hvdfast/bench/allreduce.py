"""`hvdfast bench allreduce`: a model's real gradient set through Horovod over a grid of controller, fusion
threshold, cycle time and compression, with a raw MPI_Allreduce reference and a memcpy floor from the same run.

Controller, fusion threshold and cycle time are read by hvd.init(), so the driver starts one launcher run per
(controller, fusion, cycle) cell; ops, compressions and gradient buckets are measured inside each run (buckets:
horovod.bucket_mb, the gradients as a few flat buffers of that size, one allreduce each). Reported per cell: median
wall time of one full gradient allreduce (compress -> allreduce every tensor -> synchronize -> decompress),
algorithm bandwidth (gradient bytes / time), bus bandwidth (algbw x 2(n-1)/n, the bytes each link carries in a
ring) and the ratio to a memcpy of the same bytes measured on this machine in the same run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..argtypes import amount, count, csv, one_of

COMPRESSIONS = ("none", "fp16", "bf16")
OPS = ("average", "sum")  # Horovod's reduction ops a training step uses (tune.TRAINING_OP)
# glibc malloc settings (GLIBC_TUNABLES, read at process start, so one launcher run each). MPI's collectives and
# torch allocate large temporary buffers per call; glibc serves them with fresh mmap()s whose every 4 KiB page
# faults on first touch. hugetlb=1 asks for transparent huge pages on those mappings: 512x fewer faults.
MALLOC = {"default": "", "hugepages": "glibc.malloc.hugetlb=1"}


def malloc_env(env: dict, mode: str) -> dict:
    """env with the GLIBC_TUNABLES of malloc mode `mode` merged into any the user already set."""
    extra = MALLOC[mode]
    if extra:
        env = dict(env, GLIBC_TUNABLES=":".join(t for t in (env.get("GLIBC_TUNABLES"), extra) if t))
    return env


def gradient_shapes(model_name: str) -> list[tuple[int, ...]]:
    from .. import models
    return [tuple(p.shape) for p in models.build(model_name, 1000).parameters()]


def memcpy_floor(nbytes: int, repeat: int = 10) -> float:
    """Fastest of `repeat` copies of nbytes with all of this host's cores: a floor no allreduce of those bytes
    can beat (every byte must at least be read and written once). The minimum, not the median: a floor."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return min(times[1:])


# ------------------------------------------------------------------------------------------------- worker side
def _worker(args) -> None:
    from .. import dist
    from ..dist import compression
    from ..dist.buckets import plan
    from ..config import HorovodConfig
    hcfg = HorovodConfig(fusion_threshold_mb=args.fusion_mb, cycle_time_ms=args.cycle_ms)
    shapes = gradient_shapes(args.model)
    raw = None
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        # Before Horovod starts: its background thread would otherwise poll beside the reference measurement.
        # (mpi4py initialises MPI here; Horovod then adopts the initialised MPI.)
        raw = _raw_mpi(sum(4 * _numel(s) for s in shapes), args.warmup, args.repeat)
    info = dist.init(hcfg)
    g = torch.Generator().manual_seed(info.rank)
    grads = [torch.randn(s, generator=g) for s in shapes]
    if args.layout == "channels_last":  # as a channels_last model's gradients are: our compressors' real path
        grads = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in grads]
    nbytes = sum(t.numel() * 4 for t in grads)
    results = {"controller": info.controller, "malloc": args.malloc, "fusion_mb": args.fusion_mb,
               "cycle_ms": args.cycle_ms, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
               "tensors": len(grads), "bytes": nbytes, "size": info.size, "cells": {}}
    results["times"] = []
    cases = []
    for bucket_mb in [float(b) for b in args.buckets_mb.split(",")]:
        tensors = grads if bucket_mb <= 0 else [  # what horovod.bucket_mb hands Horovod: a few flat buffers
            torch.cat([grads[i].reshape(-1) for i in idx])
            for idx in plan([t.numel() for t in grads], int(bucket_mb * 2 ** 20),
                            last_bytes=int(hcfg.last_bucket_mb * 2 ** 20))]
        cases += [(bucket_mb, tensors, op, name)
                  for op, name in itertools.product(args.ops.split(","), args.compressions.split(","))]
    for bucket_mb, tensors, op, name in cases:
        comp = compression.get(name)
        times = []
        for it in range(args.warmup + args.repeat):
            dist.barrier()
            t0 = time.perf_counter()
            handles = []
            for i, t in enumerate(tensors):
                wire, ctx = comp.compress(t)
                handles.append((dist.allreduce_async_(wire, name=f"g{i}", op=op), ctx))
            for h, ctx in handles:
                comp.decompress(dist.synchronize(h), ctx)
            times.append(time.perf_counter() - t0)
        # the slowest rank defines the step
        per_rank = dist.allgather_object(statistics.median(times[args.warmup:]),
                                         name=f"t.{bucket_mb:g}.{op}.{name}")
        results["times"].append({"bucket_mb": bucket_mb, "tensors": len(tensors), "op": op, "compression": name,
                                 "s": max(per_rank)})
    if raw is not None:
        results["raw_mpi_allreduce_s"] = raw
    if info.rank == 0:
        results["memcpy_s"] = memcpy_floor(nbytes)
        Path(args.out).write_text(json.dumps(results))
    dist.shutdown()


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _raw_mpi(nbytes: int, warmup: int, repeat: int) -> float:
    """One MPI_Allreduce (SUM, float32, in place) of all gradient bytes: what the MPI library alone achieves."""
    from mpi4py import MPI
    import numpy as np
    comm = MPI.COMM_WORLD
    buf = np.ones(nbytes // 4, dtype=np.float32)
    times = []
    for _ in range(warmup + repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    return max(comm.allgather(statistics.median(times[warmup:])))


# ------------------------------------------------------------------------------------------------- driver side
def run_cell(controller: str, malloc: str, np_: int, fusion_mb: float, cycle_ms: float, args,
             out: Path) -> dict:
    root = Path(__file__).resolve().parents[2]
    from ..launch import commands
    cmd = commands.horovodrun(np_, [
           sys.executable, "-m", "hvdfast.bench.allreduce", "--worker", "--out", str(out),
           "--model", args.model, "--fusion-mb", str(fusion_mb), "--cycle-ms", str(cycle_ms), "--malloc", malloc,
           "--compressions", args.compressions, "--ops", args.ops, "--layout", args.layout,
           "--buckets-mb", args.buckets_mb,
           "--warmup", str(args.warmup), "--repeat", str(args.repeat)], controller=controller)
    env = malloc_env(commands.process_env(), malloc)
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0 or not out.is_file():
        from .worker import bugs_said
        bug = bugs_said(out)
        raise SystemExit(f"hvdfast bench allreduce: {controller} malloc={malloc} fusion={fusion_mb} "
                         f"cycle={cycle_ms} failed"
                         + (f" on {bug}" if bug else ":\n" + (proc.stdout + proc.stderr)[-3000:]))
    return json.loads(out.read_text())


def rows_from(cell: dict) -> list[dict]:
    n = cell["size"]
    rows = []
    for m in cell["times"]:
        comp, t = m["compression"], m["s"]
        algbw = cell["bytes"] / t / 1e9
        rows.append({"controller": cell["controller"], "malloc": cell["malloc"], "fusion_mb": cell["fusion_mb"],
                     "cycle_ms": cell["cycle_ms"], "bucket_mb": m.get("bucket_mb", 0.0), "op": m["op"],
                     "compression": comp, "ms": 1e3 * t, "algbw_gbs": algbw, "busbw_gbs": algbw * 2 * (n - 1) / n,
                     "x_memcpy": t / cell["memcpy_s"]})
    return rows


CONTROLLERS = ("mpi", "gloo")


def controllers(spec: str | None, built: dict | None = None) -> tuple[str, ...]:
    """--controllers, checked before anything is launched: the names given (comma separated), each one this
    Horovod was built with; None: every controller it was built with. built: {"mpi": bool, "gloo": bool} (default:
    this Horovod's build)."""
    if built is None:
        from ..dist import core
        built = core.build_info()["controllers"]
    if spec is None:
        return tuple(c for c in CONTROLLERS if built.get(c))
    names = tuple(c.strip() for c in spec.split(",") if c.strip())
    if not names or any(c not in CONTROLLERS for c in names):
        raise SystemExit(f"hvdfast: --controllers takes mpi and/or gloo, comma separated; got {spec!r}")
    missing = [c for c in names if not built.get(c)]
    if missing:
        have = ",".join(c for c in CONTROLLERS if built.get(c)) or "none"
        raise SystemExit(f"hvdfast: this Horovod was built without the {' and '.join(missing)} controller "
                         f"(it has: {have}); leave --controllers out to measure what it has")
    return names


def grid(args) -> tuple[list[dict], list[dict]]:
    controllers_ = controllers(args.controllers)
    fusions = [float(x) for x in args.fusion_mb.split(",")]
    cycles = [float(x) for x in args.cycle_ms.split(",")]
    mallocs = args.malloc.split(",")  # each one of MALLOC (checked by the parser)
    cells, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (ctl, mal, fus, cyc) in enumerate(itertools.product(controllers_, mallocs, fusions, cycles)):
            print(f"  {ctl:4s} malloc {mal}, fusion {fus:g} MB, cycle {cyc:g} ms ...", file=sys.stderr, flush=True)
            cell = run_cell(ctl, mal, args.np, fus, cyc, args, Path(tmp) / f"cell{i}.json")
            cells.append(cell)
            rows += rows_from(cell)
    return cells, rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--np", type=count(1), default=2, help="ranks (default 2)")
    p.add_argument("--model", default="resnet50", help="whose gradient set (count and shapes) to reduce")
    p.add_argument("--controllers",
                   help="Horovod controllers to measure, comma separated: mpi, gloo (default: those this Horovod "
                        "was built with; tune --hosts: every wire format on each)")
    p.add_argument("--fusion-mb", type=csv(amount(0)), default="0,16,64",
                   help="fusion thresholds in MiB, comma separated")
    p.add_argument("--cycle-ms", type=csv(amount(0, above=True)), default="1,5",
                   help="cycle times in ms, comma separated")
    p.add_argument("--compressions", type=csv(one_of(COMPRESSIONS)), default=",".join(COMPRESSIONS),
                   help=f"gradient wire formats, comma separated ({', '.join(COMPRESSIONS)})")
    p.add_argument("--ops", type=csv(one_of(OPS)), default=",".join(OPS),
                   help="reduction ops: average (horovod.op=average: Horovod sums, then scales the fused buffer "
                        "in a separate pass) and sum (what MPI_Allreduce computes, and what horovod.op=prescaled "
                        "sends: the 1/N is taken on the loss)")
    p.add_argument("--buckets-mb", type=csv(amount(0)), default="0,25",
                   help="gradient bucket sizes in MiB, comma separated; 0 = one allreduce per gradient tensor "
                        "(Horovod's DistributedOptimizer), N = horovod.bucket_mb=N")
    p.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last",
                   help="memory format of the 4-D gradients (the recipes train channels_last)")
    p.add_argument("--malloc", type=csv(one_of(MALLOC)), default=",".join(MALLOC),
                   help="glibc malloc modes: default, hugepages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)")
    p.add_argument("--warmup", type=count(0), default=2)
    p.add_argument("--repeat", type=count(1), default=5)
    p.add_argument("--timeout", type=count(1), default=600, help="seconds per launcher run")
    p.add_argument("--out-dir", default="runs/bench")


def main(argv=None) -> int:
    from .. import models
    from .report import hardware, header, markdown_table, writable, write
    p = argparse.ArgumentParser(prog="hvdfast bench allreduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        from .worker import guarded
        args.fusion_mb, args.cycle_ms = float(args.fusion_mb), float(args.cycle_ms)
        return guarded(args, lambda: _worker(args) or 0)
    models.check_name(args.model)  # before any launch: a worker would meet it as a traceback
    writable(args.out_dir)
    hw = hardware()
    print(f"{args.model} gradients, {args.np} ranks, median of {args.repeat}:", file=sys.stderr)
    cells, rows = grid(args)
    rows.sort(key=lambda r: r["ms"])
    table = markdown_table(rows, [("controller", "controller"), ("malloc", "malloc"), ("fusion_mb", "fusion MiB"),
                                  ("cycle_ms", "cycle ms"), ("bucket_mb", "buckets MiB"), ("op", "op"),
                                  ("compression", "compression"),
                                  ("ms", "ms"),
                                  ("algbw_gbs", "algbw GB/s"), ("busbw_gbs", "busbw GB/s"),
                                  ("x_memcpy", "x memcpy")])
    memcpy_ms = 1e3 * min(c["memcpy_s"] for c in cells)
    lines = [f"{cells[0]['tensors']} tensors, {cells[0]['bytes'] / 1e6:.1f} MB fp32; "
             f"memcpy of the same bytes: {memcpy_ms:.1f} ms"]
    for mal in args.malloc.split(","):
        raw = [c["raw_mpi_allreduce_s"] for c in cells if "raw_mpi_allreduce_s" in c and c["malloc"] == mal]
        if raw:
            lines.append(f"raw MPI_Allreduce (mpi4py, one fused fp32 buffer), malloc {mal}: "
                         f"{1e3 * statistics.median(raw):.1f} ms")
    for op, training in (("average", "horovod.op=average"), ("sum", "horovod.op=prescaled")):
        best = next((r for r in rows if r["op"] == op), None)  # rows are sorted by time
        if best:
            lines.append(f"fastest {op} ({training}): {best['controller']} malloc {best['malloc']} fusion "
                         f"{best['fusion_mb']:g} MiB cycle {best['cycle_ms']:g} ms buckets "
                         f"{best['bucket_mb']:g} MiB {best['compression']}: {best['ms']:.1f} ms "
                         f"({best['x_memcpy']:.1f}x memcpy)")
    text = "\n".join(lines)
    print(f"{header(hw)}\n{text}\n\n{table}")
    j, md = write(Path(args.out_dir), "allreduce", {"hardware": hw, "cells": cells, "rows": rows,
                                                    "memcpy_ms": memcpy_ms}, f"{text}\n\n{table}")
    _plot(rows, j.with_suffix(".png"))
    print(f"\nwrote {j}, {md} and {j.with_suffix('.png')}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    def key(r):
        return r["controller"], r["malloc"], r["cycle_ms"], r["bucket_mb"], r["op"], r["compression"]
    for k in sorted({key(r) for r in rows}):
        pts = sorted((r["fusion_mb"], r["ms"]) for r in rows if key(r) == k)
        ctl, mal, cyc, bucket, op, comp = k
        label = f"{ctl} {mal} {op} {comp} cycle {cyc:g}ms" + (f" buckets {bucket:g}MiB" if bucket else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.set(xlabel="fusion threshold (MiB)", ylabel="allreduce time (ms)", yscale="log",
           title="gradient allreduce time vs fusion threshold")
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    from hvdfast.process import run_process
    run_process(main)
