"""`hvdfast tune`: measure the allreduce grid on this machine and write the winning Horovod settings.

Horovod's own --autotune adjusts fusion threshold and cycle time within one controller while training; it cannot
switch controllers, and it does not know that fp16 compression is a pessimisation where the sum runs on a CPU that
adds fp16 slowly (Gloo here), nor that a few flat gradient buckets beat one allreduce per tensor. This measures
controller x malloc x fusion x cycle x buckets x op x compression with the model's real gradient set, picks the
fastest, explains the choice against the alternatives, and writes a YAML file that `hvdfast train` and `hvdfast
bench train` apply (recipe < tuned file < Horovod's variables < command-line overrides) while `horovod.tuned` is
`auto` (the default) and the file exists.

With --hosts it measures where the job will run instead: a few synthetic training steps across those hosts for
each controller (and Open MPI allreduce algorithm) and gradient wire format (`tune_hosts`), each step timed beside
a step of every host's worker alone at once (the floor) and the candidates ranked by img/s against it, and
`hvdfast launch hosts` passes the chosen controller on.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .argtypes import count, hosts, total_slots
from .tuned import default_path

# The grid's reduction ops and the training op that averages with each: Horovod's Average, or a Sum of gradients
# already divided by the worker count (the 1/N taken on the loss: same result, no scaling pass after the sum).
TRAINING_OP = {"average": "average", "sum": "prescaled"}


def choose(rows: list[dict]) -> tuple[dict, list[str]]:
    """The fastest cell and the reasons, one line per alternative it beat."""
    rows = sorted(rows, key=lambda r: r["ms"])
    best = rows[0]
    op = TRAINING_OP[best.get("op", "average")]

    def buckets(mb):
        return f"gradient buckets of {mb:g} MiB" if mb else "one allreduce per gradient"

    why = [f"fastest: {best['controller']}, malloc {best.get('malloc', 'default')}, fusion {best['fusion_mb']:g} "
           f"MiB, cycle {best['cycle_ms']:g} ms, compression {best['compression']}, op {op}, "
           f"{buckets(best.get('bucket_mb', 0.0))}: "
           f"{best['ms']:.1f} ms per gradient allreduce"]

    def best_of(pred):
        sel = [r for r in rows if pred(r)]
        return sel[0] if sel else None

    for ctl in sorted({r["controller"] for r in rows} - {best["controller"]}):
        alt = best_of(lambda r: r["controller"] == ctl)
        why.append(f"{ctl} at its best ({alt['compression']}, fusion {alt['fusion_mb']:g}): {alt['ms']:.1f} ms "
                   f"({alt['ms'] / best['ms']:.1f}x slower)")
    for comp in sorted({r["compression"] for r in rows} - {best["compression"]}):
        alt = best_of(lambda r: r["compression"] == comp and r["controller"] == best["controller"])
        if alt:
            verdict = "costs more than it saves" if alt["ms"] > best["ms"] else "is no faster"
            why.append(f"compression {comp} on {best['controller']}: {alt['ms']:.1f} ms — {verdict} here")
    # the other settings of one dimension, each at its best on the winning controller
    for key, default, label in (("op", "average", lambda v: f"op {TRAINING_OP[v]}"),
                                ("bucket_mb", 0.0, buckets),
                                ("malloc", "default", lambda v: f"malloc {v}")):
        for other in sorted({r.get(key, default) for r in rows} - {best.get(key, default)}):
            alt = best_of(lambda r: r.get(key, default) == other and r["controller"] == best["controller"])
            if alt:
                why.append(f"{label(other)} on {best['controller']}: {alt['ms']:.1f} ms at its best "
                           f"({alt['ms'] / best['ms']:.2f}x)")
    return best, why


# Across hosts: the gradient's wire format decides more than any Horovod knob. Every format is measured with
# HOST_BUCKET_MB buckets and HOST_CYCLE_MS, and kept with them. PowerSGD with 2, 6, 8 and 25 MiB buckets measured
# within noise of each other at 100 Mbit/s and 1 Gbit/s (ResNet-50, 2 emulated hosts), 25 MiB at the top or tied:
# fewer, larger buckets cost fewer calls. Every bucket's allreduce waits for a cycle of Horovod's background thread
# (PowerSGD's two rounds wait twice): across hosts a 5 ms cycle beat the CPU recipe's 20 ms, which was chosen on one
# host where the thread competes with compute. PowerSGD at 1 Gbit/s: the wait after backward fell from 0.035-0.047
# to 0.015-0.026 s per step, 1.6% faster over 12 pairs of runs; uncompressed at 10 Gbit/s: 0.019-0.027 to
# 0.009-0.013 s, 2.3% faster over 2 pairs (2026-11-26, 2 emulated hosts).
HOST_CYCLE_MS = 5.0
HOST_BUCKET_MB = 25.0
HOST_COMPRESSIONS = ("none", "fp16", "powersgd")
# PowerSGD sends an approximation of each weight's gradient (error feedback carries the rest into later steps);
# it must be this much faster than the best format that sends the whole gradient (none, or fp16-rounded) to win.
APPROX_MARGIN = 1.05
# Candidates within RUNOFF of the fastest after the first pass are timed again, in the reverse order (the machine's
# drift over the pass then hits them alike), and compared by the mean of their timings. On a fast link the formats
# are within a few percent of each other while one short timing of the same candidate moved by up to 10% between
# runs (PowerSGD at 1 Gbit/s: 17.97 and 19.84 img/s, 2 emulated hosts, 2026-11-26); on a slow link one format is
# far ahead and nothing is timed twice.
RUNOFF = 1.05
# Where the measure times the floor beside every step (every host's worker alone at once, seconds away: bench/
# worker.py's `interleaved`), candidates are ranked by img/s against it rather than by raw img/s: the two sides of a
# ratio timed together, where candidates timed a minute apart differ by the machine's drift too (the same format
# moved 15.69 -> 11.20 img/s within one process here, 2026-12-06). The floor costs one step per timed step at any
# worker count, and measured 0.98-1.01 of the limit (each worker alone in turn) on the emulated hosts.


def score(ranks: list[dict]) -> tuple[float, float | None]:
    """A candidate's img/s summed over the workers, and that against the floor timed beside its steps (None where
    the measure timed no floor)."""
    rate = sum(r["img_s"] for r in ranks)
    floor = sum(r["floor_img_s"] for r in ranks) if all("floor_img_s" in r for r in ranks) else None
    return rate, (rate / floor if floor else None)


def _add_timing(row: dict, ranks: list[dict]) -> None:
    """One more timing of a candidate: its img/s and, where a floor was timed, its ratio to it; img_s and score (what
    the ranking compares: the ratio, else img/s) are the means so far."""
    rate, vs_floor = score(ranks)
    row["timings"].append(rate)
    row["scores"].append(rate if vs_floor is None else vs_floor)
    row["img_s"] = sum(row["timings"]) / len(row["timings"])
    row["score"] = sum(row["scores"]) / len(row["scores"])
    row["vs_floor"] = None if vs_floor is None else row["score"]


# Open MPI's allreduce algorithms timed under the MPI controller (horovod.mpi_allreduce): its own choice, and
# recursive doubling. At 2 ranks over TCP its choice for buffers >= 256 KB (Rabenseifner's) took about twice the
# wire time of the bytes and recursive doubling the wire time; a ring took as long as Rabenseifner's (README,
# "Across hosts"). Beyond 2 ranks recursive doubling sends log2(ranks) x the bytes: measured, not assumed.
MPI_ALGORITHMS = ("auto", "recursive_doubling")


def transport(controller: str, mpi_allreduce: str | None) -> str:
    """What carried the gradients: the controller, and Open MPI's allreduce algorithm where one was forced."""
    return controller + (f" ({mpi_allreduce})" if mpi_allreduce not in (None, "auto") else "")


def host_overrides(mpi_allreduce: str = "auto") -> list[str]:
    """The settings every wire format is timed with across the hosts (and kept with when chosen)."""
    return [f"horovod.bucket_mb={HOST_BUCKET_MB:g}", "horovod.op=prescaled", f"horovod.cycle_time_ms={HOST_CYCLE_MS:g}",
            f"horovod.mpi_allreduce={mpi_allreduce}", "horovod.tuned=never"]


def tune_hosts(measure, steps: int, controllers=("mpi",)) -> dict:
    """Train a few synthetic steps across the hosts with each controller (under MPI, each of MPI_ALGORITHMS) and
    wire format and keep the fastest (PowerSGD only when it beats the whole-gradient formats, on any controller, by
    APPROX_MARGIN), by img/s against the floor timed beside its steps where the measure times one (`score`).
    measure(overrides, steps, controller, compressions) runs `hvdfast bench train`'s worker across
    the hosts under horovodrun with that controller, once, timing each wire format in turn in the same processes
    (a launch per transport, not per candidate), and returns {format: per-rank results}.

    The controller is measured, not assumed: over TCP Open MPI's allreduce reached 0.55 of the line rate where
    Horovod's Gloo controller reached 0.95 (uncompressed at 1 Gbit/s Gloo was 1.6x faster), yet at 10 Gbit/s MPI was
    1.16x faster (2 emulated hosts, 2026-11-25/26): which one wins depends on the link and the wire format."""
    rows, t0 = [], time.monotonic()
    paths = [(ctl, algo) for ctl in controllers
             for algo in (MPI_ALGORITHMS if ctl == "mpi" else ("auto",))]  # Gloo's allreduce is Gloo's own
    for ctl, algo in paths:
        by = measure(host_overrides(algo), steps, ctl, HOST_COMPRESSIONS)
        for comp in HOST_COMPRESSIONS:
            ranks = by[comp]
            rows.append({"controller": ranks[0]["controller"], "mpi_allreduce": algo, "compression": comp,
                         "bucket_mb": HOST_BUCKET_MB, "timings": [], "scores": [],
                         "wire_mb": max(r["wire_mb_per_step"] for r in ranks)})
            _add_timing(rows[-1], ranks)
    floors = all(r["vs_floor"] is not None for r in rows)  # ranked against the floor timed beside each candidate
    lead = max(r["score"] for r in rows)
    close = [r for r in rows if r["score"] * RUNOFF >= lead]
    launches = len(paths)  # one per transport, and the runoff's one per transport it times again
    if len(close) > 1:  # again, in the reverse order: the last transport first, its formats last to first
        for ctl, algo in reversed(paths):
            again = [r for r in reversed(close) if (r["controller"], r["mpi_allreduce"]) == (ctl, algo)]
            if not again:
                continue
            by = measure(host_overrides(algo), steps, ctl, [r["compression"] for r in again])
            launches += 1
            for r in again:
                _add_timing(r, by[r["compression"]])
    seconds = time.monotonic() - t0
    whole = max((r for r in rows if r["compression"] in ("none", "fp16")), key=lambda r: r["score"])
    fastest = max(rows, key=lambda r: r["score"])
    best = fastest if fastest["score"] > APPROX_MARGIN * whole["score"] else whole
    several = len({(r["controller"], r["mpi_allreduce"]) for r in rows}) > 1

    def path(r):
        return transport(r["controller"], r["mpi_allreduce"])

    def name(r):
        return f"{path(r)} + {r['compression']}" if several else r["compression"]

    def against(r):  # what the ranking compared: img/s against the floor timed beside it, or img/s
        return f", {r['vs_floor']:.3f} of the floor beside it" if floors else ""
    why = [f"fastest across the hosts{' (img/s against the floor timed beside each)' if floors else ''}: "
           f"{'controller ' + path(best) + ', ' if several else ''}compression "
           f"{best['compression']} with {best['bucket_mb']:g} MiB buckets, {best['img_s']:.2f} img/s{against(best)} "
           f"({best['wire_mb']:.1f} MB sent per step per worker)"]
    why += [f"{name(r)}: {r['img_s']:.2f} img/s{against(r)} ({best['score'] / r['score']:.2f}x slower, "
            f"{r['wire_mb']:.1f} MB/step)" for r in rows if r is not best]
    n, k = launches, len(paths)
    why.append(f"measured in {n} launch{'es' * (n != 1)} ({k} transport{'s' * (k != 1)}, every format in turn in "
               f"each{', then the close ones again' if n > k else ''}), {seconds:.0f} s")
    if len(close) > 1:
        why.append(f"timed twice, being within {RUNOFF - 1:.0%} of the fastest at first (means above): "
                   + "; ".join(f"{name(r)} " + " then ".join(f"{t:.2f}" for t in r["timings"])
                               + (" img/s, " + " then ".join(f"{v:.3f}" for v in r["scores"]) + " of the floor"
                                  if floors else "") for r in close))
    return {"horovod": {"compression": best["compression"], "bucket_mb": best["bucket_mb"], "op": "prescaled",
                        "cycle_time_ms": HOST_CYCLE_MS, "mpi_allreduce": best["mpi_allreduce"]},
            "launcher": {"controller": best["controller"], "env": {}}, "why": why, "candidates": rows,
            "launches": launches, "seconds": round(seconds, 1)}


def save(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _main_hosts(args) -> int:
    """`hvdfast tune --hosts ...`: measure across the hosts the job will run on."""
    from .bench import allreduce, train
    from .bench.report import hardware
    spec = argparse.Namespace(config=args.config, overrides=["data.backend=synthetic"], model=args.model,
                              batch=args.batch, image_size=args.image_size, warmup=1, baseline_threads="1",
                              controller=None, timeout=args.timeout)
    train.check_recipe(spec)  # as bench train's driver: checked here, the workers given the absolute path
    n = total_slots(args.hosts)

    def measure(overrides, steps, controller, compressions):
        run = argparse.Namespace(**vars(spec), steps=steps)
        run.overrides = spec.overrides + overrides
        run.controller = controller
        algo = next(o.partition("=")[2] for o in overrides if o.startswith("horovod.mpi_allreduce="))
        with tempfile.TemporaryDirectory() as tmp:
            print(f"  {transport(controller, algo)}: {', '.join(compressions)} ...", file=sys.stderr, flush=True)
            return train.by_format(train._launch("hvdfast", run, n, Path(tmp) / "out.json", hosts=args.hosts,
                                                 nic=args.nic, compressions=compressions, interleave="floor"))

    doc = tune_hosts(measure, args.steps, allreduce.controllers(args.controllers))
    hw = hardware()
    doc["measured_on"] = {"hosts": args.hosts, "nic": args.nic, "from": hw["host"], "model": args.model}
    out = Path(args.out) if args.out else default_path()
    save(doc, out)
    print("\n".join(doc["why"]))
    print(f"\nwrote {out}: hvdfast train applies it (horovod.tuned=auto); hvdfast launch hosts adds "
          f"--{doc['launcher']['controller']}")
    return 0


def main(argv=None) -> int:
    from . import models
    from .bench import allreduce
    from .bench.report import hardware, header, writable
    p = argparse.ArgumentParser(prog="hvdfast tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    allreduce.add_arguments(p)
    p.add_argument("--out", help=f"settings file (default {default_path()}; HVDFAST_TUNED=PATH to move it)")
    hp = p.add_argument_group("across hosts (--hosts): a few training steps per controller (--controllers) and "
                              "gradient wire format on the hosts and link the job will use, instead of the "
                              "allreduce grid on this host")
    hp.add_argument("--hosts", type=hosts, help="h1:1,h2:1 (horovodrun -H syntax)")
    hp.add_argument("--nic", help="network interface between the hosts")
    hp.add_argument("--config", default="launch/configs/digits-cpu.yaml", help="recipe to start from")
    hp.add_argument("--batch", type=count(1), default=8, help="images per worker per step")
    hp.add_argument("--image-size", type=count(1), default=224, help="px")
    hp.add_argument("--steps", type=count(1), default=3, help="timed steps per candidate")
    args = p.parse_args(argv)
    writable((Path(args.out) if args.out else default_path()).parent, "the settings file's folder")
    models.check_name(args.model)  # before any launch: a worker would meet it as a traceback
    if args.hosts:
        return _main_hosts(args)
    args.ops = ",".join(TRAINING_OP)  # each a way training can average
    hw = hardware()
    print(header(hw), file=sys.stderr)
    _, rows = allreduce.grid(args)
    best, why = choose(rows)
    out = Path(args.out) if args.out else default_path()
    doc = {
        "horovod": {"fusion_threshold_mb": float(best["fusion_mb"]), "cycle_time_ms": float(best["cycle_ms"]),
                    "compression": best["compression"], "op": TRAINING_OP[best.get("op", "average")],
                    "bucket_mb": float(best.get("bucket_mb", 0.0))},
        "launcher": {"controller": best["controller"],
                     "env": allreduce.malloc_env({}, best.get("malloc", "default"))},
        "why": why,
        "measured_on": {"host": hw["host"], "cpu": hw["cpu"], "cores": hw["cores"], "ranks": args.np,
                        "model": args.model},
        "grid_ms": [{k: r[k] for k in ("controller", "malloc", "fusion_mb", "cycle_ms", "bucket_mb", "op",
                                       "compression", "ms")}
                    for r in rows],
    }
    save(doc, out)
    print("\n".join(why))
    env = " ".join(f"{k}={v}" for k, v in doc["launcher"]["env"].items())
    print(f"\nwrote {out}: hvdfast train / bench train apply it (horovod.tuned=auto); hvdfast launch adds the "
          f"launcher settings, by hand: {env + ' ' if env else ''}horovodrun --{best['controller']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
