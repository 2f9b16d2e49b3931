"""`hvdfast tune`: measure the allreduce grid on this machine and write the winning Horovod settings.

Horovod's own --autotune adjusts fusion threshold and cycle time within one controller while training; it cannot
switch controllers, and it does not know that fp16 compression is a pessimisation where the sum runs on a CPU that
adds fp16 slowly (Gloo here), nor that a few flat gradient buckets beat one allreduce per tensor. This measures
controller x malloc x fusion x cycle x buckets x op x compression with the model's real gradient set, picks the
fastest, explains the choice against the alternatives, and writes a YAML file that `hvdfast train` and `hvdfast
bench train` apply (recipe < tuned file < command-line overrides) while `horovod.tuned` is `auto` (the default)
and the file exists.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

TUNED_KEYS = ("fusion_threshold_mb", "cycle_time_ms", "compression", "op", "bucket_mb")
# The grid's reduction ops and the training op that averages with each: Horovod's Average, or a Sum of gradients
# already divided by the worker count (the 1/N taken on the loss: same result, no scaling pass after the sum).
TRAINING_OP = {"average": "average", "sum": "prescaled"}


def default_path() -> Path:
    env = os.environ.get("HVDFAST_TUNED")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "hvdfast" / "tuned.yaml"


def load(path: str | Path | None = None) -> dict | None:
    p = Path(path) if path else default_path()
    if not p.is_file():
        return None
    data = yaml.safe_load(p.read_text()) or {}
    return data if isinstance(data, dict) else None


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


def for_config(cfg) -> dict | None:
    """The tuned file a config uses (None with horovod.tuned=never or when there is none)."""
    choice = cfg.horovod.tuned
    if choice == "never" or not isinstance(choice, str):
        return None
    return load(None if choice == "auto" else choice)


def launcher_env(doc: dict | None) -> dict:
    """Environment the tuned file asks every rank to start with (set by the launch helpers: GLIBC_TUNABLES is
    read when a process starts, before any Python runs)."""
    return {k: str(v) for k, v in ((doc or {}).get("launcher", {}).get("env") or {}).items()}


def main(argv=None) -> int:
    from .bench import allreduce
    from .bench.report import hardware, header
    p = argparse.ArgumentParser(prog="hvdfast tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    allreduce.add_arguments(p)
    p.add_argument("--out", help=f"settings file (default {default_path()}; HVDFAST_TUNED=PATH to move it)")
    args = p.parse_args(argv)
    args.ops = ",".join(TRAINING_OP)  # each a way training can average
    hw = hardware()
    print(header(hw), file=sys.stderr)
    _, rows = allreduce.grid(args)
    best, why = choose(rows)
    out = Path(args.out) if args.out else default_path()
    out.parent.mkdir(parents=True, exist_ok=True)
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
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    print("\n".join(why))
    env = " ".join(f"{k}={v}" for k, v in doc["launcher"]["env"].items())
    print(f"\nwrote {out}: hvdfast train / bench train apply it (horovod.tuned=auto); hvdfast launch adds the "
          f"launcher settings, by hand: {env + ' ' if env else ''}horovodrun --{best['controller']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
