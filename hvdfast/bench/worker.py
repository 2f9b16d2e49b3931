"""What every rank of `hvdfast bench train` runs (and what `hvdfast tune --hosts` times): a variant's warm-up and
timed steps through the training engine's own engine.train_epoch, with the compute limit and the floor timed
between them where asked (`interleaved`), and the figures the driver (bench/train.py) reads back. The DDP peer
(bench/ddp.py) takes the same input, the same plain optimizer and the same limit and floor from here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

import torch


# The recipe keys a benchmark worker reads; the rest of a recipe is about data, the optimizer and the run, which a
# synthetic step timed with plain SGD does not have, so an override of any other key would change nothing.
READS = ("train.precision", "model.channels_last", "model.compile", "train.gc_every")
INSTEAD = {"model.name": "--model", "data.batch_size": "--batch", "data.image_size": "--image-size"}


ERROR = "hvdfast bench: error:"  # a worker's one-line failure, which the driver shows (train.read_result)


def memory_in_one_line(args, body) -> int:
    """A benchmark worker's body (-> exit code), with memory that runs out said in one line naming the benchmark's
    flags (run.fit's reading of the allocator's error), exit code 2, instead of a traceback from every rank."""
    from ..run.fit import OutOfMemory, out_of_memory_in_one_line
    try:
        with out_of_memory_in_one_line(f"--batch {args.batch} per worker, --image-size {args.image_size}, --model "
                                       f"{args.model}", "--batch or --image-size"):
            return body()
    except OutOfMemory as exc:
        sys.stderr.write(f"{ERROR} {exc}\n")  # one write: launchers tag output per chunk they read
        sys.stderr.flush()
        return 2


# What a user sends with a bug a benchmark met (there is no run folder with a config.yaml)
BENCH_FILES = "the traceback, the benchmark's command line and `hvdfast doctor`'s output"


def guarded(args, body, rank: int | None = None) -> int:
    """A benchmark worker's body (-> exit code), a failure said once instead of as a traceback from every rank (the
    driver keeps the launcher's output and shows what the ranks said): memory that runs out is one line naming the
    benchmark's flags (memory_in_one_line, exit 2); a bug (ours or a library's) goes through
    process.internal_error, every rank's traceback saved in bug_folder(--out) for the driver (bugs_said); a rank
    whose Horovod shut down because another left adds nothing (that rank's file, or the launcher's report of its
    exit, says why). `rank` for a launcher none of process.RANK_VARS names (torchrun: the DDP peer)."""
    from ..dist import peer_lost
    from ..process import internal_error
    try:
        return memory_in_one_line(args, body) if hasattr(args, "batch") else body()
    except Exception as exc:
        if peer_lost(exc):
            return 1
        return internal_error(exc, bug_folder(args.out), rank=rank, report=BENCH_FILES)


def bug_folder(out) -> Path:
    """Where a worker writing its result to `out` saves its traceback on a bug (in errors/rank<r>.txt)."""
    return Path(out).with_suffix("")


def bugs_said(out) -> str | None:
    """The bug the ranks of a failed run met (guarded), each distinct error once: the ranks that met it and the
    traceback of the lowest of them; None when no rank saved one."""
    from ..process import ranges
    folder = bug_folder(out) / "errors"
    met: dict[str, list] = {}
    for f in sorted(folder.glob("rank*.txt"), key=lambda f: int(f.stem[4:])) if folder.is_dir() else []:
        text = f.read_text().rstrip("\n").split("\n", 1)[-1]  # the traceback, after the header line
        met.setdefault(text.rsplit("\n", 1)[-1], []).append((int(f.stem[4:]), text))
    if not met:
        return None
    said = [f"rank{'s' if len(ranks) > 1 else ''} {ranges([r for r, _ in ranks])} met {what}; rank {ranks[0][0]}'s "
            f"traceback:\n{ranks[0][1]}" for what, ranks in met.items()]
    return ("a bug in hvdfast or in a library under it, not a problem with the benchmark's options: "
            + "\n".join(said) + f"\nPlease report it with {BENCH_FILES}.")


def check_overrides(overrides) -> None:
    """Refuse, in one line, an override the worker would ignore (`bench train model.name=resnet18` timed the
    default --model)."""
    from ..config import ConfigError, parse_override
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("horovod.") or key in READS or (key, value) == ("data.backend", "synthetic"):
            continue
        use = f"; use {INSTEAD[key]}" if key in INSTEAD else ""
        raise ConfigError(f"override '{text}' does not apply to a benchmark's step (synthetic images, plain SGD)"
                          f"{use}; it reads horovod.*, {', '.join(READS)} from the recipe.")


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


def run(args) -> None:
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
