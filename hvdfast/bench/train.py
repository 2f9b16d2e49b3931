"""`hvdfast bench train`: synthetic training throughput under the real launcher, hvdfast vs plain Horovod.

The driver (no launcher) starts `horovodrun -np N` once per variant, side by side in one command, and prints one
table with the hardware. A variant's worker (bench/worker.py, on every rank) runs WARMUP untimed steps, then STEPS
timed ones, through the training engine's own engine.train_epoch (the code `hvdfast train` runs), which splits
each step into forward+backward, waiting for the gradient allreduce after backward, and the optimizer update.

* baseline: what Horovod's examples/pytorch/pytorch_synthetic_benchmark.py does — fp32, NCHW, SGD(lr=0.01),
  DistributedOptimizer with no compression, Horovod's default knobs, and `--baseline-threads` torch threads.
* hvdfast: the training engine's settings from a recipe — precision auto (bf16 on a CPU with native bf16, else
  fp32; fp16 on GPU), channels_last, one thread per owned core, and the recipe's Horovod knobs (fusion, cycle
  time, compression, MPI yield).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ..argtypes import count, count_or, csv
from . import worker


# ------------------------------------------------------------------------------------------------- driver side
def worker_program(variant: str, args, out: Path, threads: int = 0, compressions: Sequence[str] = (),
                   interleave: str | None = None) -> list[str]:
    """The worker command line of one variant (what the launcher starts on every rank); with `compressions`, one
    timed run per wire format in the same processes (by_format reads the result); with `interleave`, the worker
    alone and the floor ("limit") or the floor only ("floor") timed between the run's steps (`interleaved`)."""
    cmd = [sys.executable, "-m", "hvdfast.bench.train", "--worker", "--variant", variant, "--out", str(out),
           "--model", args.model, "--batch", str(args.batch), "--image-size", str(args.image_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--baseline-threads", str(args.baseline_threads), "--threads", str(threads)]
    if args.config:
        cmd += ["--config", args.config]
    if compressions:
        cmd += ["--compressions", ",".join(compressions)]
    if interleave:
        cmd += ["--interleave", interleave]
    return cmd + list(args.overrides)


def launcher_cmd(variant: str, args, np_: int, program: list[str], hosts: str | None = None,
                 nic: str | None = None) -> list[str]:
    """horovodrun through `hvdfast launch`'s builder: the hvdfast variant with the process environment `hvdfast
    tune` chose, the baseline with Horovod's defaults."""
    from ..launch import job
    spec = argparse.Namespace(np=np_, nic=nic, controller=args.controller, config=args.config,
                              overrides=list(args.overrides))
    return job.horovodrun_cmd(spec, hosts or f"localhost:{np_}", program, tuned_env=variant == "hvdfast")


def read_result(variant: str, np_: int, proc: subprocess.CompletedProcess, out: Path) -> list[dict]:
    if proc.returncode != 0 or not out.is_file():
        text = proc.stdout + proc.stderr
        said = sorted({line.split(worker.ERROR, 1)[1].strip() for line in text.splitlines() if worker.ERROR in line})
        if said:  # the workers' own line(s), once each: not the launchers' report and every rank's copy
            raise SystemExit(f"hvdfast bench: the {variant} run at {np_} worker(s) failed: " + " | ".join(said))
        bug = worker.bugs_said(out)
        if bug:
            raise SystemExit(f"hvdfast bench: the {variant} run at {np_} worker(s) failed on {bug}")
        raise SystemExit(f"hvdfast bench: the {variant} run at {np_} worker(s) failed:\n{text[-3000:]}")
    return json.loads(out.read_text())


def by_format(ranks: list[list[dict]]) -> dict[str, list[dict]]:
    """A --compressions run's result (per rank, one entry per format) as {format: per-rank results}."""
    return {runs[0]["compression"]: list(runs) for runs in zip(*ranks)}


def _launch(variant: str, args, np_: int, out: Path, threads: int = 0, hosts: str | None = None,
            nic: str | None = None, compressions: Sequence[str] = (), interleave: str | None = None) -> list:
    root = Path(__file__).resolve().parents[2]
    cmd = launcher_cmd(variant, args, np_, worker_program(variant, args, out, threads, compressions, interleave),
                       hosts, nic)
    from ..launch import commands
    proc = subprocess.run(cmd, env=commands.process_env(), cwd=root, capture_output=True, text=True,
                          timeout=args.timeout)
    return read_result(variant, np_, proc, out)


def _summarise(variant: str, np_: int, ranks: list[dict]) -> dict:
    def mean(k):
        return None if ranks[0][k] is None else statistics.mean(r[k] for r in ranks)

    return {"variant": variant, "workers": np_, "threads_per_worker": ranks[0]["threads"],
            "controller": ranks[0]["controller"], "precision": ranks[0]["precision"],
            "channels_last": ranks[0]["channels_last"], "compression": ranks[0]["compression"],
            "img_s_per_worker": mean("img_s"), "img_s_total": sum(r["img_s"] for r in ranks),
            "compute_s": mean("compute_s"), "comm_wait_s": mean("comm_wait_s"),
            "optimizer_s": mean("optimizer_s"), "step_s": mean("step_s"),
            "wire_mb_per_step": mean("wire_mb_per_step"), "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
            "device": ranks[0].get("device", "cpu").split(":")[0], "compiled": ranks[0].get("compiled", False)}


def _launch_ddp(args, np_: int, out: Path) -> list[dict]:
    """The torchrun + DDP peer (bench/ddp.py) on this host, with the threads hvdfast's workers get."""
    root = Path(__file__).resolve().parents[2]
    threads = max(1, (os.cpu_count() or 1) // np_)
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", str(np_),
           "-m", "hvdfast.bench.ddp", "--hook", args.ddp_hook, "--model", args.model, "--batch", str(args.batch),
           "--image-size", str(args.image_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(threads), "--precision", recipe_precision(args), "--out", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout)
    ranks = read_result("ddp", np_, proc, out)
    for r in ranks:  # DDP waits for its allreduces inside backward: the step is not split further
        gpu = r.get("device", "cpu").startswith("cuda")
        r.update(controller="nccl (torch)" if gpu else "gloo (torch)", channels_last=True,
                 compression=f"hook {r['hook']}", compute_s=None,
                 comm_wait_s=None, optimizer_s=None)
    return ranks


def recipe_precision(args) -> str:
    """The train.precision of the hvdfast variant (recipe + overrides): the DDP peer trains in the same."""
    from .. import config
    return config.load(args.config, args.overrides).train.precision


def check_recipe(args) -> None:
    """The recipe as an absolute path (the workers start in the checkout, not here) and the overrides checked now,
    so a mistyped key, or one the workers would not read, stops the command in one line instead of failing in every
    worker or changing nothing."""
    from .. import config, models
    from .worker import check_overrides
    config.load(args.config, args.overrides)  # its errors name the recipe as the user wrote it
    check_overrides(args.overrides)
    models.check_name(args.model)
    args.config = str(config.locate(args.config))


def _driver(args) -> int:
    from .report import hardware, header, markdown_table, writable, write
    check_recipe(args)
    writable(args.out_dir)
    hw = hardware()
    nps = [int(n) for n in str(args.np).split(",")]
    variants = ([args.baseline] if args.baseline else []) + ["hvdfast"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for np_ in nps:
            for v in variants:
                print(f"running {v} at {np_} worker(s) ...", file=sys.stderr, flush=True)
                out = Path(tmp) / f"{v}-{np_}.json"
                ranks = _launch_ddp(args, np_, out) if v == "ddp" else _launch(
                    "baseline" if v == "horovod" else v, args, np_, out)
                rows.append(_summarise("baseline (plain Horovod)" if v == "horovod" else v, np_, ranks))
    cols = [("variant", "variant"), ("workers", "workers"), ("threads_per_worker", "threads/worker"),
            ("controller", "controller"), ("device", "device"), ("precision", "precision"),
            ("channels_last", "NHWC"), ("compiled", "compiled"), ("compression", "compression"),
            ("img_s_total", "img/s total"), ("img_s_per_worker", "img/s/worker"),
            ("compute_s", "fwd+bwd s"), ("comm_wait_s", "comm wait s"), ("optimizer_s", "optim s"),
            ("step_s", "step s"), ("peak_rss_mb", "peak RSS MB/worker")]
    table = markdown_table(rows, cols)
    ratios = []
    one = next((r for r in rows if r["variant"] == "hvdfast" and r["workers"] == 1), None)
    for np_ in nps:
        by = {r["variant"]: r for r in rows if r["workers"] == np_}
        for name in by.keys() - {"hvdfast"}:
            ratios.append(f"hvdfast / {name} at {np_} worker(s): "
                          f"{by['hvdfast']['img_s_total'] / by[name]['img_s_total']:.2f}x")
        if one is not None and np_ > 1:
            ratios.append(f"hvdfast at {np_} workers / hvdfast at 1 worker with all {one['threads_per_worker']} "
                          f"cores: {by['hvdfast']['img_s_total'] / one['img_s_total']:.2f}x")
    text = (f"{header(hw)}\nmodel {args.model}, {args.image_size} px, batch {args.batch}/worker, synthetic data, "
            f"median of {args.steps} steps after {args.warmup} warm-up\n\n{table}\n" + "\n".join(ratios))
    print(text)
    j, md = write(Path(args.out_dir), "train", {"hardware": hw, "rows": rows, "ratios": ratios}, table + "\n\n"
                  + "\n".join(ratios))
    print(f"\nwrote {j} and {md}")
    return 0


def scaling(argv=None) -> int:
    """`hvdfast bench scaling --np 1,2`: the hvdfast variant at each worker count on this machine."""
    from .report import hardware, header, markdown_table, writable, write
    p = argparse.ArgumentParser(prog="hvdfast bench scaling", description=scaling.__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    check_recipe(args)
    writable(args.out_dir)
    nps = sorted({int(n) for n in str(args.np).split(",")} | {1})
    cores = os.cpu_count() or 1
    per_worker = max(1, cores // max(nps))
    hw = hardware()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"running 1 worker with {per_worker} core(s) ...", file=sys.stderr, flush=True)
        same = _summarise("hvdfast", 1, _launch("hvdfast", args, 1, Path(tmp) / "same.json", threads=per_worker))
        same["variant"] = f"1 worker, {per_worker} core(s)"
        for np_ in nps:
            print(f"running {np_} worker(s) ...", file=sys.stderr, flush=True)
            r = _summarise("hvdfast", np_, _launch("hvdfast", args, np_, Path(tmp) / f"n{np_}.json"))
            r["variant"] = f"{np_} worker(s), {r['threads_per_worker']} core(s) each"
            rows.append(r)
    full = rows[0]  # 1 worker with every core
    for r in rows[1:]:
        r["eff_same_cores"] = r["img_s_total"] / (r["workers"] * same["img_s_total"])
        r["vs_1_worker_all_cores"] = r["img_s_total"] / full["img_s_total"]
    rows.insert(0, same)
    table = markdown_table(rows, [("variant", "run"), ("img_s_total", "img/s total"),
                                  ("img_s_per_worker", "img/s/worker"), ("comm_wait_s", "comm wait s"),
                                  ("eff_same_cores", "efficiency (same cores/worker)"),
                                  ("vs_1_worker_all_cores", "vs 1 worker, all cores")])
    print(f"{header(hw)}\nmodel {args.model}, {args.image_size} px, batch {args.batch}/worker\n\n{table}")
    j, md = write(Path(args.out_dir), "scaling", {"hardware": hw, "rows": rows}, table)
    _plot_scaling(rows[1:], j.with_suffix(".png"))
    print(f"\nwrote {j}, {md} and {j.with_suffix('.png')}")
    return 0


def _plot_scaling(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    n = [r["workers"] for r in rows]
    ax.plot(n, [r["img_s_total"] for r in rows], "o-", label="measured")
    ax.plot(n, [rows[0]["img_s_total"] * k / n[0] for k in n], "--", label="linear from 1 worker")
    ax.set(xlabel="workers", ylabel="images/s (all workers)", title="hvdfast bench scaling")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="launch/configs/digits-cpu.yaml",
                   help="recipe whose precision, channels_last and Horovod knobs the hvdfast variant uses")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--np", type=csv(count(1)), default="2", help="worker counts, comma separated (default 2)")
    p.add_argument("--baseline", nargs="?", const="horovod", choices=["horovod", "ddp"],
                   help="also run a peer: horovod (plain Horovod's synthetic-benchmark setup; the default) or ddp "
                        "(torchrun + DDP at its best: precision auto, channels_last, gradient_as_bucket_view; "
                        "bench/ddp.py)")
    p.add_argument("--ddp-hook", default="none", choices=["none", "fp16", "bf16", "powersgd"],
                   help="with --baseline ddp: DDP's communication hook")
    p.add_argument("--baseline-threads", type=count_or("default"), default="1",
                   help="torch threads per baseline worker: N or default")
    p.add_argument("--controller", choices=["mpi", "gloo"], default="mpi")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=count(1), default=8, help="images per worker per step")
    p.add_argument("--image-size", type=count(1), default=224, help="px")
    p.add_argument("--steps", type=count(1), default=5)
    p.add_argument("--warmup", type=count(0), default=2)
    p.add_argument("--timeout", type=count(1), default=900, help="seconds per launcher run")
    p.add_argument("--out-dir", default="runs/bench", help="where the JSON and markdown reports go")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hvdfast bench train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="hvdfast", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--compressions", help=argparse.SUPPRESS)
    p.add_argument("--interleave", choices=worker.INTERLEAVE, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker.guarded(args, lambda: worker.run(args) or 0)
    return _driver(args)


if __name__ == "__main__":
    from hvdfast.process import run_process
    run_process(main)
