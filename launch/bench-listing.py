"""How long the ranks take to list an ImageFolder: each rank on its own, or rank 0 once with a broadcast (what
training does: hvdfast.data.scan_once). Run it under the launcher, with a folder of ImageNet's shape:

    python launch/bench-listing.py /tmp/names-imagenet --make       # 1,000 classes x (1,281 + 50) empty files
    horovodrun -np 2 -H localhost:2 --gloo python launch/bench-listing.py /tmp/names-imagenet every
    horovodrun -np 2 -H localhost:2 --gloo python launch/bench-listing.py /tmp/names-imagenet once

(`echo 3 > /proc/sys/vm/drop_caches` before a run times a cold page cache.) Measured output: README, "Data".
"""
from __future__ import annotations

import argparse
import os
import time


def make(root: str, classes: int = 1000, train: int = 1281, val: int = 50) -> None:
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            name = f"n{c:08d}"
            os.makedirs(f"{root}/{split}/{name}", exist_ok=True)
            for i in range(n):
                os.close(os.open(f"{root}/{split}/{name}/{name}_{10000 + 7 * i}.JPEG", os.O_CREAT | os.O_WRONLY,
                                 0o644))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("mode", nargs="?", choices=("every", "once"), default="once")
    p.add_argument("--make", action="store_true", help="write the empty-file folder and stop")
    args = p.parse_args()
    if args.make:
        make(args.folder)
        return
    from hvdfast import config, data, dist
    from hvdfast.data.folder import scan
    info = dist.init(config.load(None, []).horovod)
    dist.barrier()
    start = time.perf_counter()
    train, val = scan(args.folder) if args.mode == "every" else data.scan_once(args.folder, info)
    mine = time.perf_counter() - start
    dist.barrier()
    if info.rank == 0:
        print(f"{args.mode}: {info.size} rank(s), {len(train)} + {len(val)} files: rank 0 {mine:.2f} s, every rank "
              f"done {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
