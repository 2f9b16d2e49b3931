"""Where the first emulated host's core spends a training step: the worker alone, then 2 hosts on one link with
each wire format, sampled with `perf record -e cpu-clock -C CORE` while steady steps run (as root, with perf).

    python launch/profile-cluster.py [LINK] [--formats fp16,powersgd] [--steps 70] [--out runs/bench/profile]

Prints, per shared object (code generated at run time, libtorch, the kernel, Python, ...), the milliseconds of that core
per training step: the worker alone and each format across the hosts, side by side from one run. The cluster,
worker and recipe are `hvdfast bench cluster`'s (hvdfast's worker, ResNet-50 224 px, batch 8, the digits recipe's
knobs), each format with the settings `hvdfast tune --hosts` times it with (tune.host_overrides); perf starts 30 s
into each run, after start-up and warm-up, and samples 10 s.
Measured output: README, "Where a fast link's step goes".
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hvdfast import tune  # noqa: E402
from hvdfast.bench import cluster  # noqa: E402

# perf cannot name code generated at run time: oneDNN's convolution kernels and numba's PowerSGD loops (lowrank.py)
# both land in [JIT]; the alone column has no PowerSGD, so a PowerSGD column's excess there is mostly those loops
GROUPS = (("[JIT]", "JIT code (oneDNN's convolutions, numba's PowerSGD loops)"), ("libtorch_cpu", "rest of libtorch"),
          ("[kernel", "kernel (TCP, page faults, scheduling)"), ("libpython", "Python"))


def perf(path: Path, core: str, delay: float, seconds: float) -> None:
    time.sleep(delay)
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-C", core, "-o", str(path), "--", "sleep",
                    str(seconds)], check=True, capture_output=True)


def by_group(path: Path) -> dict[str, float]:
    """Share of samples (0-1) per row of GROUPS, the rest under "other"."""
    out = subprocess.run(["perf", "report", "-i", str(path), "--sort", "dso", "--stdio"], capture_output=True,
                         text=True, check=True).stdout
    shares = {name: 0.0 for _, name in GROUPS} | {"other (libc, MPI, Horovod, ...)": 0.0}
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)", line)
        if not m:
            continue
        name = next((n for key, n in GROUPS if m.group(2).startswith(key)), "other (libc, MPI, Horovod, ...)")
        shares[name] += float(m.group(1)) / 100
    return shares


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("link", nargs="?", default="unlimited", choices=list(cluster.LINKS))
    ap.add_argument("--formats", default="fp16,powersgd", help="wire formats to profile across the hosts")
    ap.add_argument("--steps", type=int, default=70, help="timed steps per run (perf samples 10 s of them)")
    ap.add_argument("--out", default="runs/bench/profile", help="where the perf.data files are kept")
    a = ap.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("profile-cluster: perf is not installed (apt-get install linux-perf)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    args = cluster.parser().parse_args(["--steps", str(a.steps)])  # bench cluster's worker, hosts and recipe
    bucket_mb = dict(tune.HOST_CANDIDATES)  # each format as `hvdfast tune --hosts` times it
    runs = [("alone", 1, tune.host_overrides("none", bucket_mb["none"]))] + [
        (f, 2, tune.host_overrides(f, bucket_mb.get(f, bucket_mb["none"]))) for f in a.formats.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        bench = cluster.Bench(args, Path(tmp))
        core = bench.cpus.get(bench.workers[0], "0").split("-")[0]
        bench.cluster.start()
        try:
            for name, n, overrides in runs:
                bench.cluster.shape(None if n == 1 else cluster.LINKS[a.link])
                data = out / f"{a.link}-{name}.data"
                sampler = threading.Thread(target=perf, args=(data, core, 30, 10))
                sampler.start()
                ranks = bench.horovod("hvdfast", overrides, n=n)
                sampler.join()
                step = statistics.mean(r["step_s"] for r in ranks)
                rows[name] = (sum(r["img_s"] for r in ranks), step, by_group(data))
                print(f"{name}: {rows[name][0]:.2f} img/s, {step * 1e3:.0f} ms/step", flush=True)
        finally:
            bench.cluster.stop()
    limit = 2 * rows["alone"][0]
    names = list(rows)
    print(f"\nms of core {core} per step ({a.link} link; efficiency against 2 x alone = {limit:.2f} img/s)")
    print("| | " + " | ".join(f"{n} ({rows[n][1] * 1e3:.0f} ms/step" + ("" if n == "alone" else
                                f", eff {rows[n][0] / limit:.2f}") + ")" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for group in rows["alone"][2]:
        print(f"| {group} | " + " | ".join(f"{rows[n][2][group] * rows[n][1] * 1e3:.0f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
