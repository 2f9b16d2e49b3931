"""`hvdfast bench cluster`: training throughput across emulated hosts whose links are shaped, side by side.

Two "hosts" (network namespaces on this machine, each with its own address, hostname and sshd: hosts.py) run one
worker each, ResNet-50 on synthetic images, with their link limited by a token-bucket filter (link presets
100mbit, 1gbit, 10gbit, unlimited). On every link, in one command:

  hvdfast        the recipe with the settings `hvdfast tune --hosts` picks on that link (measured there)
  horovod        plain Horovod as its examples run it (pytorch_synthetic_benchmark.py: fp32, NCHW, one allreduce
                 per gradient, Horovod's default knobs), started by horovodrun as hvdfast is
  ddp, ddp-fp16, ddp-bf16, ddp-powersgd
                 torchrun + DistributedDataParallel at its best (bench/ddp.py): precision auto (bf16 where
                 the CPU computes it natively), channels_last, gradient_as_bucket_view, and each of DDP's
                 communication hooks
  hvdfast@KEY=VALUE[+KEY=VALUE...]
                 the tuned hvdfast with these config settings on top: an A/B of a setting against `hvdfast` in the
                 same rounds (`--variants hvdfast,hvdfast@horovod.cycle_time_ms=2 --repeat 4`), each round's
                 ratio in "x hvdfast, each round"

The compute limit is the same worker alone on one host (no network), times the number of hosts: efficiency is
img/s against it, and the communication share is the part of a step beyond that worker's step alone. It is
measured again just before each link's runs, in every round, and each link's rows are compared with the limit
measured beside them: this machine's speed drifts by ~10% within an hour, which a limit measured once at the
start mixes into every efficiency. Beside it, the floor: every worker host's worker alone at the same time, no
communication between them (what the hosts' shared memory system leaves of the limit; "x floor" compares with
it). Both are also timed inside every run, between its steps ("efficiency, limit in the run", "x floor in the
run"; bench/worker.py's `interleaved`): each cycle is every host's worker alone in turn while the others wait at a
barrier, then every worker alone at once, then one step of the run, so both sides of the ratio are timed seconds
apart on the same cores. The workers of the run keep their communication library's background threads alive
meanwhile (Horovod's coordination cycles, Gloo's), which a worker alone in a launch of its own does not have.
Also reported: bytes each worker sends per step (the namespace's interface counters), peak memory per
worker, and whether the ranks' final parameters agree.

After the timed runs, the accuracy cost of every lossy wire format an hvdfast row sent (accuracy.py): the recipe
trained on real images (the digits by default) on this host with that format and uncompressed, same seeds
(--accuracy-seeds, 0 skips), each row's final top-1 against uncompressed in "top-1 cost, pt".

Each worker host gets cores / hosts cores of its own (taskset on its sshd; the login host, which only launches,
shares them all) and a worker of that many threads, as hosts of a real cluster do not share cores; the one-host
runs of the compute limit run on the first worker host, so on the same cores. Without that (`--shared-cores`, or
more hosts than cores) every worker's threads, Horovod's background thread and the kernel's TCP work compete for
all of the machine's cores, and a worker alone may borrow the idle host's core for its helpers. What the hosts
still share is the memory system, which the floor measures: no wire format can do better than it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..argtypes import amount, count
from ..launch import commands
from . import accuracy, cluster_report, hosts
from .cluster_report import in_run, mean_alone, mean_floor, summarise

LINKS = {"100mbit": "100mbit", "1gbit": "1gbit", "10gbit": "10gbit", "unlimited": None}
DDP_HOOKS = {"ddp": "none", "ddp-fp16": "fp16", "ddp-bf16": "bf16", "ddp-powersgd": "powersgd"}
VARIANTS = ("hvdfast", "horovod", *DDP_HOOKS)
# DDP's PowerSGD hook over Gloo needs ONE bucket: with several, each bucket's chained allreduces (uncompressed
# part, Ps, Qs) are issued from future callbacks in an order that differs between ranks, and Gloo, which pairs
# collectives by issue order, aborts ("op.preamble.length <= op.nbytes ... collective mismatch"; seen here with
# 25 MiB buckets). Horovod negotiates every tensor by name, so hvdfast's PowerSGD may finish buckets in any order.
POWERSGD_DDP_BUCKET_MB = 1024.0
ROOT = Path(__file__).resolve().parents[2]


class Bench:
    """One emulated cluster (a login host + `n` worker hosts) and the runs on it."""

    def __init__(self, args, work: Path):
        self.args = args
        self.work = work
        self.workers = [f"host{chr(ord('a') + i)}" for i in range(args.hosts)]
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // args.hosts)
        own = not args.shared_cores and args.hosts <= cores
        # host i: cores [i k, (i + 1) k) for k = threads
        self.cpus = {h: (f"{i * self.threads}-{(i + 1) * self.threads - 1}" if self.threads > 1 else str(i))
                     for i, h in enumerate(self.workers)} if own else {}
        self.cluster = hosts.Cluster(work, [("login", "login", [])] + [(h, h, []) for h in self.workers],
                                     cpus=self.cpus)
        # the login host's launcher environment, as `hvdfast launch` builds it (a clean one, not this shell's)
        self.env = commands.process_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, PYTHONPATH=str(ROOT))
        if os.environ.get("HVDFAST_TUNED"):
            self.env["HVDFAST_TUNED"] = os.environ["HVDFAST_TUNED"]
        self.seq = 0

    def _out(self, tag: str) -> Path:
        self.seq += 1
        return self.work / f"{self.seq:02d}-{tag}.json"

    def _train_args(self, overrides: list[str]) -> argparse.Namespace:
        a = self.args
        return argparse.Namespace(config=a.config, overrides=["data.backend=synthetic", *a.overrides, *overrides],
                                  model=a.model, batch=a.batch, image_size=a.image_size, steps=a.steps,
                                  warmup=a.warmup, baseline_threads=str(self.threads), controller=a.controller)

    def _horovod_cmd(self, variant: str, overrides: list[str], on: list[str], steps: int | None,
                     controller: str | None, compressions: Sequence[str] = (),
                     interleave: str | None = None) -> tuple[list[str], Path]:
        """horovodrun, as the login host starts it, of the hvdfast or baseline worker of `hvdfast bench train`
        with one worker on each host of `on` (timing each of `compressions` in turn, where given; with
        `interleave`, the limit and the floor or the floor only between the run's steps: bench train's
        `interleaved`); and the file the workers' results go to."""
        from . import train
        targs = self._train_args(overrides)
        targs.steps = steps or targs.steps
        targs.controller = controller or targs.controller
        out = self._out(variant)
        program = train.worker_program("hvdfast" if variant == "hvdfast" else "baseline", targs, out, self.threads,
                                       compressions, interleave)
        return train.launcher_cmd(variant, targs, len(on), program, hosts=",".join(f"{h}:1" for h in on),
                                  nic="hvd0"), out

    def horovod(self, variant: str, overrides: list[str], n: int | None = None, steps: int | None = None,
                controller: str | None = None, compressions: Sequence[str] = (),
                interleave: str | None = None) -> list:
        """One horovodrun job over the first `n` worker hosts (default: all), from the login host: per-rank
        results (with `compressions`, per rank one per format)."""
        from . import train
        on = self.workers[:n or len(self.workers)]
        cmd, out = self._horovod_cmd(variant, overrides, on, steps, controller, compressions, interleave)
        proc = self.cluster.ssh("login", shlex.join(cmd), self.env, ROOT, timeout=self.args.timeout)
        return train.read_result(variant, len(on), proc, out)

    def formats(self, overrides: list[str], steps: int, controller: str, compressions: Sequence[str]) -> dict:
        """One hvdfast job over every worker host timing each wire format in turn, each step beside a floor step
        (tune.tune_hosts ranks by the ratio): {format: per-rank results} (tune.tune_hosts' `measure`)."""
        from . import train
        return train.by_format(self.horovod("hvdfast", overrides, steps=steps, controller=controller,
                                            compressions=compressions, interleave="floor"))

    def apart(self, variant: str, overrides: list[str]) -> list[dict]:
        """A one-worker horovodrun job on every worker host at the same time: the workers compute side by side
        and never communicate (the floor). One result per host."""
        procs, outs = [], []
        for h in self.workers:
            cmd, out = self._horovod_cmd(variant, overrides, [h], None, None)
            procs.append(self.cluster.ssh_start("login", shlex.join(cmd), self.env, ROOT, out.with_suffix(".log")))
            outs.append(out)
        self._wait(procs, outs, [o.with_suffix(".log") for o in outs], f"a {variant} worker alone")
        return [r for out in outs for r in json.loads(out.read_text())]

    def _wait(self, procs: list, outs: list[Path], logs: list[Path], what: str) -> None:
        """Wait for processes started together (one deadline for all); if any exited non-zero or a result file
        is missing, one message with the log of the first that failed (else the first log)."""
        deadline = time.time() + self.args.timeout
        codes = [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
        if any(codes) or not all(o.is_file() for o in outs):
            log = logs[next((i for i, c in enumerate(codes) if c), 0)].read_text()[-3000:]
            raise SystemExit(f"hvdfast bench cluster: {what} failed (exit codes {codes}):\n{log}")

    def ddp(self, hook: str, interleave: bool = False) -> list[dict]:
        """torchrun on every host (as a user starts a multi-node DDP job), rendezvous at the first host."""
        from . import train
        out = self._out(f"ddp-{hook}")
        n = len(self.workers)
        procs = []
        for rank, host in enumerate(self.workers):
            cmd = [str(Path(sys.executable).parent / "torchrun"), "--nnodes", str(n), "--nproc-per-node", "1",
                   "--node-rank", str(rank), "--master-addr", self.cluster.addr[self.workers[0]],
                   "--master-port", "29411", "-m", "hvdfast.bench.ddp", "--hook", hook,
                   "--bucket-cap-mb", str(POWERSGD_DDP_BUCKET_MB if hook == "powersgd" else self.args.ddp_bucket_mb),
                   "--powersgd-rank", str(self.args.powersgd_rank),
                   "--model", self.args.model, "--batch", str(self.args.batch),
                   "--image-size", str(self.args.image_size), "--steps", str(self.args.steps),
                   "--warmup", str(self.args.warmup), "--threads", str(self.threads),
                   "--precision", train.recipe_precision(self._train_args([])), "--out", str(out)]
            cmd += ["--interleave"] if interleave else []
            env = dict(self.env, GLOO_SOCKET_IFNAME="hvd0", OMP_NUM_THREADS=str(self.threads))
            procs.append(self.cluster.ssh_start(host, shlex.join(cmd), env, ROOT, out.with_suffix(f".{rank}.log")))
        self._wait(procs, [out], [out.with_suffix(f".{rank}.log") for rank in range(n)], f"DDP ({hook})")
        return json.loads(out.read_text())


def split_variant(variant: str) -> tuple[str, list[str]]:
    """("hvdfast", ["horovod.cycle_time_ms=2", ...]) from "hvdfast@horovod.cycle_time_ms=2+..."; (name, []) for a
    variant without settings. Raises SystemExit with one line for an unknown variant, or settings on a variant
    other than hvdfast (the baselines run as their users run them)."""
    name, at, settings = variant.partition("@")
    if name not in VARIANTS:
        raise SystemExit(f"hvdfast bench cluster: unknown variant {name!r} (variants: {', '.join(VARIANTS)}, and "
                         f"hvdfast@KEY=VALUE+... for hvdfast with settings on top)")
    if not at:
        return name, []
    overrides = [o for o in settings.split("+") if o]
    if name != "hvdfast" or not overrides or not all("=" in o for o in overrides):
        raise SystemExit(f"hvdfast bench cluster: {variant!r}: only the hvdfast variant takes settings, as "
                         f"hvdfast@section.key=value[+section.key=value...]")
    return name, overrides


def round_order(variants: list[str], rep: int) -> list[str]:
    """The variants in round `rep`'s order: as given, then reversed, alternately (A B, B A, ...), so that a drift of
    the machine's speed over the rounds (up to 13% within a run here) favours no variant by its place in the list."""
    return list(variants) if rep % 2 == 0 else list(reversed(variants))


@contextlib.contextmanager
def _taken_down_on_signals():
    """SIGTERM or SIGHUP (a job's time limit, a closed terminal, `timeout`) ends the command the way Ctrl-C does:
    through the `finally` that takes the emulated hosts down (their processes, namespaces and bridge), which
    Python's default for those signals would skip, leaving the hosts and their workers behind."""
    def stop(signum, frame):
        print(f"hvdfast bench cluster: stopped by {signal.Signals(signum).name}; taking the emulated hosts down",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    before = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def run(args) -> int:
    from .report import hardware, header, writable, write
    from .. import config, models, tune
    from . import allreduce
    links = args.links.split(",")
    variants = args.variants.split(",")
    for bad in [lk for lk in links if lk not in LINKS]:
        raise SystemExit(f"hvdfast bench cluster: unknown link {bad!r} (links: {', '.join(LINKS)})")
    settings = {v: split_variant(v) for v in variants}
    recipe = config.locate(args.config)  # absolute: the workers start in ROOT
    args.config = str(recipe)
    try:  # a mistyped key or value is refused now, not after the cluster is built and a link tuned
        models.check_name(args.model)
        for _, overrides in settings.values():
            config.load(recipe, [*args.overrides, *overrides])
        # the accuracy runs' data, checked now rather than after the timed runs
        why = accuracy.unavailable(recipe, [*args.overrides, f"model.name={args.model}"], args.accuracy_seeds,
                                   args.accuracy_epochs)
    except config.ConfigError as exc:
        raise SystemExit(f"hvdfast bench cluster: {exc}") from None
    if why:
        raise SystemExit(f"hvdfast bench cluster: {why}.")
    writable(args.out_dir)
    why = hosts.unavailable()
    if why:
        raise SystemExit(f"hvdfast bench cluster: cannot build the emulated hosts here: {why}.")
    tune_controllers = allreduce.controllers(args.tune_controllers)
    hw = hardware()
    rows, tuned_docs = [], {}
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    interleave = None if args.no_interleave else "limit"  # the limit and the floor between every run's steps
    with tempfile.TemporaryDirectory(prefix="hvdfast-cluster-") as tmp, _taken_down_on_signals():
        bench = Bench(args, Path(tmp))
        try:
            bench.cluster.start()
            results: dict = {}
            alone_runs = {link: {"hvdfast": [], "horovod": []} for link in links}
            floor_runs: dict = {link: [] for link in links}
            for rep in range(args.repeat):  # every variant once per round: the machine's drift hits all alike
                for link in links:
                    # beside each link's runs: the compute limit (one worker alone on one host, its threads as in
                    # the cluster, no network) and the floor (every host's worker alone at once)
                    say(f"round {rep + 1}/{args.repeat}, {link}: the compute limit and the floor ...")
                    alone_runs[link]["hvdfast"] += bench.horovod("hvdfast", ["horovod.tuned=never"], n=1)
                    if "horovod" in variants:
                        alone_runs[link]["horovod"] += bench.horovod("horovod", [], n=1)
                    if not args.no_floor:
                        floor_runs[link].append(bench.apart("hvdfast", ["horovod.tuned=never"]))
                    say(f"  limit {len(bench.workers) * alone_runs[link]['hvdfast'][-1]['img_s']:.2f} img/s"
                        + (f", floor {sum(r['img_s'] for r in floor_runs[link][-1]):.2f}" if floor_runs[link]
                           else ""))
                    bench.cluster.shape(LINKS[link])
                    for v in round_order(variants, rep):
                        say(f"{link}: {v} ...")
                        name, overrides = settings[v]
                        if name == "hvdfast":
                            if link not in tuned_docs:  # hvdfast tune --hosts on this link, once
                                doc = tune.tune_hosts(bench.formats, args.tune_steps, tune_controllers)
                                tune.save(doc, Path(tmp) / f"tuned-{link}.yaml")
                                tuned_docs[link] = doc
                            # the settings of an A/B variant come after the tuned file, and a setting the
                            # user gives wins over the tuned file's (tuned.py)
                            ranks = bench.horovod("hvdfast", [f"horovod.tuned={Path(tmp) / f'tuned-{link}.yaml'}",
                                                              *overrides],
                                                  controller=tuned_docs[link]["launcher"]["controller"],
                                                  interleave=interleave)
                        elif name == "horovod":
                            ranks = bench.horovod("horovod", [], interleave=interleave)
                        else:
                            ranks = bench.ddp(DDP_HOOKS[v], interleave=interleave is not None)
                        results.setdefault((link, v), []).append(ranks)
                        say(f"  {sum(r['img_s'] for r in ranks):.2f} img/s, "
                            f"{statistics.mean(r['wire_mb_per_step'] for r in ranks):.1f} MB sent per step per worker"
                            + (f", efficiency {in_run([ranks])['efficiency_in_run']:.3f} against the limit in the run"
                               if interleave else ""))
            alone_by_link = {link: {k: mean_alone(v) for k, v in d.items() if v} for link, d in alone_runs.items()}
            floor = {link: mean_floor(v) for link, v in floor_runs.items() if v}
            # every run of the limit, all links together (what `bench model` takes as the compute time)
            alone = {k: mean_alone([r for d in alone_runs.values() for r in d[k]]) for k in ("hvdfast", "horovod")
                     if alone_runs[links[0]][k]}
            rows = [summarise(v, link, runs, alone_by_link[link]["horovod" if v == "horovod" else "hvdfast"],
                              floor.get(link) if v != "horovod" else None, len(bench.workers))
                    for (link, v), runs in results.items()]
        except subprocess.TimeoutExpired:
            raise SystemExit(f"hvdfast bench cluster: a run took longer than --timeout {args.timeout} s; the "
                             f"emulated hosts are taken down (raise --timeout for slower settings)") from None
        finally:
            bench.cluster.stop()
    acc = accuracy_of_rows(args, recipe, rows, tuned_docs, say)
    text, doc = cluster_report.render(args, rows, links, bench, alone, alone_by_link, floor, tuned_docs, acc)
    print(f"{header(hw)}\n{text}")  # the report file has the header already (report.write)
    j, md = write(Path(args.out_dir), "cluster", {"hardware": hw, **doc}, text)
    cluster_report.plot(rows, j.with_suffix(".png"))
    print(f"\nwrote {j}, {md} and {j.with_suffix('.png')}")
    return 0


def accuracy_of_rows(args, recipe, rows: list[dict], tuned_docs: dict, say) -> dict | None:
    """The accuracy cost of every lossy wire format among the hvdfast rows (bench/accuracy.py), put in each row
    as "top1_cost_pt" (final top-1 against uncompressed, points; None for a lossless row or a baseline, whose
    workers train on synthetic images only). None when no hvdfast row sent a lossy format or --accuracy-seeds 0."""
    wire = {}
    for r in rows:
        r["top1_cost_pt"] = None
        name, overrides = split_variant(r["variant"])
        if name == "hvdfast" and r["settings"] != accuracy.LOSSLESS:
            # what the workers said they sent decides the format; the tuned file and the row's own settings the rest
            wire[id(r)] = accuracy.wire_settings(tuned_docs.get(r["link"]), overrides) | {
                "horovod.compression": r["settings"]}
    formats = list({tuple(sorted(w.items())): w for w in wire.values()}.values())
    if not formats or not args.accuracy_seeds:
        return None
    acc = accuracy.measure(recipe, formats, workers=args.hosts, seeds=args.accuracy_seeds,
                           epochs=args.accuracy_epochs, overrides=[*args.overrides, f"model.name={args.model}"],
                           say=say)
    for r in rows:
        if id(r) in wire:
            r["top1_cost_pt"] = acc["cost_pt"][accuracy.label(wire[id(r)], formats)]["final"]
    return acc


def parser() -> argparse.ArgumentParser:
    """`hvdfast bench cluster`'s options (also the defaults launch/profile-cluster.py runs its workers with)."""
    p = argparse.ArgumentParser(prog="hvdfast bench cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="launch/configs/digits-cpu.yaml",
                   help="recipe whose precision, layout and Horovod knobs the hvdfast variant starts from, and "
                        "which the accuracy runs train")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--links", default=",".join(LINKS), help=f"link presets, comma separated ({', '.join(LINKS)})")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="what to run on each link, comma separated; hvdfast@section.key=value[+...] is the tuned "
                        "hvdfast with settings on top, for an A/B against hvdfast in the same rounds")
    p.add_argument("--hosts", type=count(2), default=2, help="emulated hosts, one worker each (at least 2)")
    p.add_argument("--shared-cores", action="store_true",
                   help="let the hosts share every core (default: each host gets cores / hosts cores of its own, "
                        "where there are at least as many cores as hosts)")
    p.add_argument("--controller", choices=["mpi", "gloo"], default="mpi",
                   help="horovodrun controller for the plain Horovod variant (its default where MPI is built)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=count(1), default=8, help="images per worker per step")
    p.add_argument("--image-size", type=count(1), default=224, help="px")
    p.add_argument("--steps", type=count(1), default=5)
    p.add_argument("--warmup", type=count(0), default=2)
    p.add_argument("--repeat", type=count(1), default=1,
                   help="rounds over every link and variant (and the one-host limit), the variants in "
                        "alternating order (A B, B A, ...); figures are means over rounds")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the floor (every host's worker alone at the same time) beside each link")
    p.add_argument("--no-interleave", action="store_true",
                   help="skip timing the limit and the floor inside every run, between its steps (each cycle: "
                        "every host's worker alone in turn, then all alone at once, then one step of the run; "
                        "hosts + 2 steps for each step of the run)")
    p.add_argument("--tune-steps", type=count(1), default=2, help="timed steps per candidate when tuning on a link")
    p.add_argument("--tune-controllers",
                   help="Horovod controllers the tuning on each link measures every wire format with, comma "
                        "separated (default: those this Horovod was built with)")
    p.add_argument("--accuracy-seeds", type=count(0), default=1,
                   help="after the timed runs: train the recipe (--config: the digits set) on this host with each "
                        "lossy wire format the hvdfast rows sent and uncompressed, seeds 0..N-1, and report each "
                        "format's top-1 cost in points (0: skip)")
    p.add_argument("--accuracy-epochs", type=amount(0, above=True),
                   help="epochs of each accuracy run (default: the recipe's)")
    p.add_argument("--powersgd-rank", type=count(1), default=4, help="DDP's PowerSGD hook rank (hvdfast: its recipe)")
    p.add_argument("--ddp-bucket-mb", type=amount(0, above=True), default=25.0, help="DDP's bucket_cap_mb")
    p.add_argument("--timeout", type=count(1), default=900, help="seconds per run")
    p.add_argument("--out-dir", default="runs/bench")
    return p


def main(argv=None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
