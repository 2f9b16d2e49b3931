"""`hvdfast bench train`: synthetic training throughput under the real launcher, hvdfast vs plain Horovod.

The driver (no launcher) starts `horovodrun -np N` once per variant, side by side in one command, and prints one
table with the hardware. A variant's worker runs WARMUP untimed steps, then STEPS timed ones, through the training
engine's own engine.train_epoch (the code `hvdfast train` runs), which splits each step into forward+backward,
waiting for the gradient allreduce after backward, and the optimizer update.

* baseline: what Horovod's examples/pytorch/pytorch_synthetic_benchmark.py does — fp32, NCHW, SGD(lr=0.01),
  DistributedOptimizer with no compression, Horovod's default knobs, and `--baseline-threads` torch threads.
* hvdfast: the training engine's settings from a recipe — precision auto (bf16 on a CPU with native bf16, else
  fp32; fp16 on GPU), channels_last, one thread per owned core, and the recipe's Horovod knobs (fusion, cycle
  time, compression, MPI yield).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch


# ------------------------------------------------------------------------------------------------- worker side
def net_bytes_sent() -> int:
    """Bytes this network namespace has sent on every interface but loopback (/proc/net/dev is per namespace)."""
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, fields = line.partition(":")
        if name.strip() != "lo":
            total += int(fields.split()[8])
    return total


def synthetic_batch(args, rank: int, device: torch.device, channels_last: bool):
    """The benchmarks' fixed input: random images (a different draw per rank) and 1000-class labels."""
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 1000, (args.batch,), generator=g).to(device)


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss, KiB on Linux)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpus() -> str:
    """The cores this process may run on (its affinity), as taskset writes them: "0", "0-3", "0,2"."""
    ids = sorted(os.sched_getaffinity(0))
    runs, start = [], ids[0]
    for prev, cur in zip(ids, ids[1:] + [None]):
        if cur != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(runs)


class PlainOptimizer:
    """A torch optimizer behind the interface the training engine drives Horovod's through, with nothing to
    synchronise: the worker's own step with no communication at all (`interleaved`'s compute limit)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups

    def synchronize(self) -> None:
        pass

    def skip_synchronize(self):
        return contextlib.nullcontext()

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()


INTERLEAVE = ("limit", "floor")
# interleaved's first cycles, run and dropped: after a run of another wire format in the same process (`hvdfast tune
# --hosts`), its first floor step took 2.46 and 2.92 s where the next ones took 0.98-1.42 (PowerSGD after none and
# fp16 at 100 Mbit/s). Callers that keep their own step records drop as many of them.
UNTIMED_CYCLES = 1


def interleaved(cycles: int, rank: int, size: int, barrier, together, alone,
                mode: str = "limit", floor=None) -> dict[str, list[float]]:
    """A run's own steps with its compute limit and its floor timed between them, step by step, in the same
    processes: each cycle is every rank's step alone in turn (the others wait at a barrier on cores of their own:
    the limit, as one worker alone on one host; mode "limit" only), then every rank's step alone at the same time
    (the floor: what the hosts' shared memory system leaves), then one step together (the run). `together()` and
    `alone()` run one step and return its seconds. Limit and run measured seconds apart instead of minutes: this
    machine's speed moved by up to 25% between separate launches a few minutes apart, which no number of rounds
    averages away from a ratio whose two sides were timed at different moments. Mode "floor" costs one step per
    step at any worker count (the limit's turns cost one per worker: `hvdfast tune --hosts` uses the floor).
    `floor()`, where given, runs the floor's steps instead of `alone()` (a worker keeping their phases)."""
    times: dict[str, list[float]] = {"alone_s": [], "floor_s": [], "step_s": []}
    for _ in range(UNTIMED_CYCLES + cycles):
        for r in range(size if mode == "limit" else 0):
            barrier()
            if r == rank:
                times["alone_s"].append(alone())
        barrier()
        times["floor_s"].append((floor or alone)())
        barrier()
        times["step_s"].append(together())
    return {k: v[UNTIMED_CYCLES:] for k, v in times.items()}


def phase_means(times: list) -> dict[str, float]:
    """Each phase of engine.StepTimes averaged over steps (means, not medians: the phases add up to the step)."""
    return {f.name: statistics.mean(getattr(t, f.name) for t in times) for f in dataclasses.fields(times[0])}


def lone_figures(cycles: dict | None, batch: int, run: list | None = None, floor: list | None = None) -> dict:
    """A worker's result's part from `interleaved`: its img/s alone (the limit's turns) and at the floor, medians
    over the cycles, and every cycle's seconds; given the run's and the floor's steps' phases (engine.StepTimes
    of the timed cycles), both averaged per phase ("phases"): where the run's step lost time against the floor's."""
    if cycles is None:
        return {}
    alone = {"alone_img_s": batch / statistics.median(cycles["alone_s"])} if cycles["alone_s"] else {}
    phases = {"phases": {"run": phase_means(run), "floor": phase_means(floor)}} if run and floor else {}
    return {**alone, "floor_img_s": batch / statistics.median(cycles["floor_s"]), "cycles": cycles, **phases}


def _worker(args) -> None:
    """One variant's run on this rank; with --compressions, one run per wire format in this process (the model and
    optimizer built anew for each, each with its warm-up), as `hvdfast tune --hosts` times the formats: one launch
    per transport instead of one per format, the launch (seconds on a laptop, a minute at scale) paid once."""
    from .. import dist, engine, tuned
    cfg, _ = tuned.load_config(args.config, args.overrides)  # as `hvdfast train` resolves it
    baseline = args.variant == "baseline"
    if baseline:
        info = dist.init(None, pin_threads=False)  # Horovod's defaults, as its example runs
        if args.baseline_threads != "default":
            torch.set_num_threads(int(args.baseline_threads))
        prec = engine.precision_for("fp32", info.device)
    else:
        info = dist.init(cfg.horovod)
        if args.threads:
            torch.set_num_threads(args.threads)  # scaling: the same cores per worker at every worker count
        prec = engine.precision_for(cfg.train.precision, info.device)
    if args.compressions:  # each format resolved as `hvdfast train` would (a format needing buckets refused)
        runs = []
        for i, c in enumerate(args.compressions.split(",")):
            gc.collect()  # the previous format's model and optimizer (a cycle: its gradient hooks hold it)
            # the first format warms the process too (one more untimed step): of four fp16 timings in one process
            # across 2 emulated hosts the first was 5% below the others (10.49 against 10.95-11.13 img/s)
            fmt_cfg, _ = tuned.load_config(args.config, [*args.overrides, f"horovod.compression={c}"])
            runs.append(_timed_run(args, fmt_cfg, info, prec, baseline, warmup=args.warmup + (i == 0)))
    else:
        runs = [_timed_run(args, cfg, info, prec, baseline, args.warmup)]
    gathered = dist.allgather_object(runs if args.compressions else runs[0], name="bench.gather")
    if info.rank == 0:
        Path(args.out).write_text(json.dumps(gathered))
    dist.shutdown()


def _timed_run(args, cfg, info, prec, baseline: bool, warmup: int) -> dict:
    """`warmup` untimed and STEPS timed steps of a freshly built model under the variant's settings: this rank's
    medians, bytes sent per step, and parameter digest."""
    from .. import config, dist, engine, models
    from ..run.summary import param_digest
    hcfg = config.HorovodConfig() if baseline else cfg.horovod
    model = models.build(args.model, 1000, zero_init_residual=not baseline).to(info.device)
    dist.broadcast_model(model)
    channels_last = not baseline and cfg.model.channels_last
    if channels_last:
        models.to_channels_last(model)
    opt = dist.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), model, hcfg)
    forward = models.compiled(model, not baseline and cfg.model.compile)
    divisor = dist.loss_divisor(hcfg)  # op=prescaled: Horovod sums gradients already divided by the worker count
    batch = synthetic_batch(args, info.rank, info.device, channels_last)
    sent = {0: net_bytes_sent(), "timed": 0}

    def on_step(step: int) -> None:
        if step == warmup:
            sent[0] = net_bytes_sent()
        collect(step)

    def steps(net, optimizer, n: int, times: list, on_step=on_step, divisor: int = divisor, prec=prec) -> None:
        """n steps of the training engine's own step (what `hvdfast train` runs), each timed per phase:
        forward+backward, the wait for the allreduces backward did not hide, and the update."""
        engine.train_epoch(net, optimizer, itertools.repeat(batch, n), steps=n, first_step=0,
                           lr_fn=lambda step: 0.01, criterion=torch.nn.CrossEntropyLoss(), prec=prec,
                           loss_divisor=divisor, log_every=n, on_step=on_step, step_times=times)

    step_times: list = []
    cycles = None
    floor_times: list = []  # with interleave: the floor's steps, each split into phases as the run's are
    # the baseline: Python's collector as Horovod's example leaves it; hvdfast: as `hvdfast train` schedules it
    with engine.scheduled_gc(0 if baseline else cfg.train.gc_every) as collect:
        if not args.interleave:
            steps(forward, opt, warmup + args.steps, step_times)
            sent["timed"] = net_bytes_sent() - sent[0]
        else:  # the same worker's step without communication between the run's steps: a model of its own
            lone = models.build(args.model, 1000, zero_init_residual=not baseline).to(info.device)
            if channels_last:
                models.to_channels_last(lone)
            lone_forward = models.compiled(lone, forward is not model)
            plain = PlainOptimizer(torch.optim.SGD(lone.parameters(), lr=0.01, momentum=0.9))
            lone_prec = engine.precision_for(prec.name, info.device)  # a loss scaler of its own (fp16 on a GPU)
            steps(forward, opt, warmup, step_times)
            steps(lone_forward, plain, 1, [], on_step=lambda step: None, divisor=1, prec=lone_prec)  # all at once

            def together() -> float:
                before = net_bytes_sent()  # the run's steps only: not the barriers' bytes between them
                steps(forward, opt, 1, step_times, on_step=lambda step: collect(len(step_times)))
                if len(step_times) > warmup + UNTIMED_CYCLES:
                    sent["timed"] += net_bytes_sent() - before
                return step_times[-1].step_s

            def alone(kept: list | None = None) -> float:
                mine: list = [] if kept is None else kept
                steps(lone_forward, plain, 1, mine, on_step=lambda step: None, divisor=1, prec=lone_prec)
                return mine[-1].step_s

            cycles = interleaved(args.steps, info.rank, info.size, dist.barrier, together, alone, args.interleave,
                                 floor=lambda: alone(floor_times))
            del floor_times[:UNTIMED_CYCLES]
    timed = step_times[warmup + (UNTIMED_CYCLES if cycles is not None else 0):]
    times = [(t.compute_s, t.comm_wait_s, t.update_s, t.step_s) for t in timed]
    wire = sent["timed"] / args.steps
    return {**lone_figures(cycles, args.batch, timed, floor_times), "rank": info.rank,
            "threads": torch.get_num_threads(), "cpus": cpus(),
            "controller": info.controller,
            "mpi_allreduce": hcfg.mpi_allreduce if info.controller == "mpi" else None,
            # the process's peak so far: with --compressions, a later format's includes the earlier ones'
            "wire_mb_per_step": wire / 1e6, "peak_rss_mb": peak_rss_mb(), "params_sha256": param_digest(model),
            "compute_s": statistics.median(t[0] for t in times),
            "comm_wait_s": statistics.median(t[1] for t in times),
            "optimizer_s": statistics.median(t[2] for t in times),
            "step_s": statistics.median(t[3] for t in times),
            "img_s": args.batch / statistics.median(t[3] for t in times),
            "precision": prec.name, "channels_last": channels_last, "compression": hcfg.compression,
            "compiled": forward is not model, "device": str(info.device),
            "gpu": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else None}


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
    from .. import launch
    spec = argparse.Namespace(np=np_, hostfile=None, nic=nic, controller=args.controller, config=args.config,
                              overrides=list(args.overrides))
    return launch.horovodrun_cmd(spec, hosts or f"localhost:{np_}", program, tuned_env=variant == "hvdfast")


def read_result(variant: str, np_: int, proc: subprocess.CompletedProcess, out: Path) -> list[dict]:
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(f"hvdfast bench: the {variant} run at {np_} worker(s) failed:\n{tail}")
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
           "--threads", str(threads), "--out", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout)
    ranks = read_result("ddp", np_, proc, out)
    for r in ranks:  # DDP waits for its allreduces inside backward: the step is not split further
        gpu = r.get("device", "cpu").startswith("cuda")
        r.update(controller="nccl (torch)" if gpu else "gloo (torch)", channels_last=True,
                 compression=f"hook {r['hook']}", compute_s=None,
                 comm_wait_s=None, optimizer_s=None)
    return ranks


def _driver(args) -> int:
    from .report import hardware, header, markdown_table, write
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
    from .report import hardware, header, markdown_table, write
    p = argparse.ArgumentParser(prog="hvdfast bench scaling", description=scaling.__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
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
    p.add_argument("--np", default="2", help="worker counts, comma separated (default 2)")
    p.add_argument("--baseline", nargs="?", const="horovod", choices=["horovod", "ddp"],
                   help="also run a peer: horovod (plain Horovod's synthetic-benchmark setup; the default) or ddp "
                        "(torchrun + DDP at its best: precision auto, channels_last, gradient_as_bucket_view; "
                        "bench/ddp.py)")
    p.add_argument("--ddp-hook", default="none", choices=["none", "fp16", "bf16", "powersgd"],
                   help="with --baseline ddp: DDP's communication hook")
    p.add_argument("--baseline-threads", default="1", help="torch threads per baseline worker: N or default")
    p.add_argument("--controller", choices=["mpi", "gloo"], default="mpi")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=8, help="images per worker per step")
    p.add_argument("--image-size", type=int, default=224, help="px")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900, help="seconds per launcher run")
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
    p.add_argument("--interleave", choices=INTERLEAVE, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    return _driver(args)


if __name__ == "__main__":
    from hvdfast.process import run_process
    run_process(main)
