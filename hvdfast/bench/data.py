"""`hvdfast bench data`: images per second through the full training input pipeline, one process, equal cores.

Each backend decodes, crops, resizes, flips and normalises a training epoch exactly as `hvdfast train` would,
with `--threads` cores (DALI: pipeline threads; torchvision: DataLoader worker processes). The first `--warmup`
batches (pipeline start, worker start-up) are not timed; the rate is over the next `--batches` within one epoch.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ..argtypes import count, csv, one_of


def measure(backend: str, data_dir: str, threads: int, batch: int, image_size: int, warmup: int,
            batches: int, device: str = "cpu") -> dict:
    from .. import config, data
    from ..dist import DistInfo
    cfg = config.load(None, [f"data.dir={data_dir}", f"data.backend={backend}", f"data.batch_size={batch}",
                             f"data.image_size={image_size}", f"data.workers={threads}",
                             "model.channels_last=true", "train.epochs=1"])  # one epoch: nothing built ahead
    torch.set_num_threads(1)  # the main process only hands batches on; the decoding cores are `threads`
    dev = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
    info = DistInfo(rank=0, local_rank=0, size=1, local_size=1, cores_per_rank=threads, device=dev,
                    controller="none")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    d = data.build(cfg, info)
    need = warmup + batches
    if d.train.steps_per_epoch < need:
        raise SystemExit(f"hvdfast bench data: {data_dir} gives {d.train.steps_per_epoch} batches per epoch; "
                         f"need {need} (use more images or fewer --batches).")
    it = d.train.epoch(0)
    for _ in range(warmup):
        next(it)
    sync()
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _y = next(it)
        n += x.shape[0]
    sync()  # GPU decoding (DALI "mixed") is asynchronous: count only finished batches
    dt = time.perf_counter() - t0
    it.close()
    return {"backend": d.backend, "device": dev.type, "threads": threads, "images": n, "seconds": dt, "img_s": n / dt,
            "batch": batch, "image_size": image_size}


def main(argv=None) -> int:
    from .report import hardware, header, markdown_table, writable, write
    p = argparse.ArgumentParser(prog="hvdfast bench data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="ImageFolder (e.g. from 'hvdfast data photos DIR')")
    p.add_argument("--backend", type=csv(one_of(("dali", "torchvision"))), default="dali,torchvision",
                   help="comma-separated backends (default both)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu",
                   help="where batches end up; gpu: DALI decodes JPEGs with nvJPEG (device='mixed') "
                        "(default: gpu where there is one)")
    p.add_argument("--threads", type=count(1), default=os.cpu_count(), help="cores per backend (default: all)")
    p.add_argument("--batch", type=count(1), default=32)
    p.add_argument("--image-size", type=count(1), default=224, help="px")
    p.add_argument("--warmup", type=count(0), default=3, help="untimed batches")
    p.add_argument("--batches", type=count(1), default=12, help="timed batches")
    p.add_argument("--out-dir", default="runs/bench")
    args = p.parse_args(argv)
    writable(args.out_dir)
    hw = hardware()
    rows = []
    for backend in args.backend.split(","):
        print(f"measuring {backend} with {args.threads} core(s) ...", file=sys.stderr, flush=True)
        rows.append(measure(backend, args.dir, args.threads, args.batch, args.image_size, args.warmup,
                            args.batches, args.device))
    table = markdown_table(rows, [("backend", "backend"), ("device", "device"), ("threads", "cores"),
                                  ("batch", "batch"), ("image_size", "px"), ("images", "images timed"),
                                  ("img_s", "img/s")])
    by = {r["backend"]: r["img_s"] for r in rows}
    ratio = (f"DALI / torchvision: {by['dali'] / by['torchvision']:.2f}x"
             if "dali" in by and "torchvision" in by else "")
    print(f"{header(hw)}\ndata: {args.dir}\n\n{table}\n{ratio}")
    j, md = write(Path(args.out_dir), "data", {"hardware": hw, "rows": rows, "ratio": ratio}, f"{table}\n\n{ratio}")
    print(f"\nwrote {j} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
