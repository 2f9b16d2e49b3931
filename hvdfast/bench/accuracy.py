"""The accuracy cost of the lossy wire formats a benchmark ran, measured beside its speed figures.

`hvdfast bench cluster` times each wire format across the hosts on synthetic images, which says nothing about what
a lossy format (fp16, bf16, PowerSGD) does to the model. For every lossy format its hvdfast rows trained with, this
trains the recipe (by default the embedded digits set, written if missing) on real images with that format and
with none, the same seeds, the same number of workers, on this host (`hvdfast launch local`, through the cells of
`hvdfast study`: study.train_cells), and reports each format's best and final validation top-1 against
uncompressed, in points. The wire format's numbers are what matter, not the link: a run's sums are the same
whether they cross a shaped link or shared memory (2 workers: a + b either way).
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from .. import config
from ..data import embedded
from ..study import grid, report, train_cells

LOSSLESS = "none"
# The Horovod settings that change a run's numbers; the others (cycle time, fusion, MPI's algorithm, yield, timeline,
# the tuned file) change only its speed, so runs that differ only in those share one accuracy run.
NUMERIC_KEYS = ("compression", "powersgd_rank", "bucket_mb", "op", "backward_passes_per_step",
                "gradient_predivide_factor")


def wire_settings(tuned: dict | None, overrides: list[str]) -> dict[str, str]:
    """The settings that decide a hvdfast row's numbers, as section.key -> value text: the tuned file's
    NUMERIC_KEYS, then the row's own overrides (an A/B variant's) on top, less the Horovod ones that only change
    speed (a setting outside the horovod section is kept: it may change the numbers)."""
    out = {f"horovod.{k}": str(v) for k, v in ((tuned or {}).get("horovod") or {}).items() if k in NUMERIC_KEYS}
    for o in overrides:
        key, _, value = o.partition("=")
        section, _, name = key.partition(".")
        if section != "horovod" or name in NUMERIC_KEYS:
            out[key] = value
    return out


def label(settings: dict[str, str], others: list[dict[str, str]]) -> str:
    """The wire format's name ("powersgd"), with what sets it apart where other runs have the same format."""
    fmt = settings.get("horovod.compression", LOSSLESS)
    twins = [o for o in others if o != settings and o.get("horovod.compression", LOSSLESS) == fmt]
    if not twins:
        return fmt
    keys = sorted({k for t in twins for k in {*t, *settings} if t.get(k) != settings.get(k)})
    return f"{fmt} ({', '.join(f'{k}={settings[k]}' if k in settings else f'{k} as in the recipe' for k in keys)})"


def measure(recipe: str | Path, formats: list[dict[str, str]], *, workers: int, seeds: int, epochs: float | None,
            overrides: list[str], say=print) -> dict:
    """Train `recipe` uncompressed and with each of `formats` (settings from wire_settings), seeds 0..seeds-1,
    `workers` workers on this host. Returns {"recipe", "epochs", "seeds", "workers", "runs": {label: [run, ...]},
    "mean_top1": {label: {"best", "final"}}, "cost_pt": {label: {"best", "final"}}, "settings": {label: settings}}:
    each run's best and final top-1 and the compression it trained with (read back from its config.yaml); a
    format's cost is its mean over the seeds minus uncompressed's, in points."""
    cfg = config.load(recipe, overrides)
    data_set = Path(cfg.data.dir).name
    settings = {LOSSLESS: {}} | {label(f, formats): f for f in formats}
    names = list(settings)
    # each run, as the study variant that trains it -> (its format, its seed)
    runs_of = {f"f{i}-s{seed}": (name, seed) for i, name in enumerate(names) for seed in range(seeds)}
    variants = {v: [*(f"{k}={x}" for k, x in settings[name].items()), f"train.seed={seed}"]
                for v, (name, seed) in runs_of.items()}
    spec = grid.Spec(recipe=str(recipe), epochs=epochs if epochs is not None else cfg.train.epochs,
                     target_top1=cfg.train.target_top1, workers=workers,
                     batch=cfg.data.batch_size * workers * cfg.horovod.backward_passes_per_step,
                     max_batch_per_worker=cfg.data.batch_size, precision=cfg.train.precision,
                     optimizers={"recipe": ()}, variants=variants,
                     data=data_set if data_set in embedded.SETS else "",
                     # the machine's tuned file never applies (each run's wire format is set here), the reference
                     # sends whole fp32 gradients, one checkpoint at the end (in a folder deleted after)
                     overrides=(*overrides, "horovod.tuned=never", f"horovod.compression={LOSSLESS}",
                                "train.checkpoint_every=0", "train.keep_checkpoints=1"))
    cells = [c for c in grid.cells(spec) if c.axis == "variant"]  # the base point is not one of the runs
    say(f"accuracy of the wire formats {', '.join(names)}: {recipe}, {spec.epochs:g} epochs, {seeds} seed(s), "
        f"{workers} workers on this host ...")
    runs: dict = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="hvdfast-accuracy-") as tmp:
        failed = train_cells(spec, cells, Path(tmp))
        if failed:
            cell, why = next(iter(failed.items()))
            raise SystemExit(f"hvdfast bench: the accuracy run {cell} failed: {why}")
        for c in cells:
            run_dir = Path(tmp) / "cells" / c.id
            s = report.summary(run_dir)
            name, seed = runs_of[c.variant]
            runs[name].append({"seed": seed, "best_top1": s["best_top1"], "final_top1": s["final_top1"],
                                   "compression": config.load(run_dir / "config.yaml").horovod.compression})
    mean = {name: {k: statistics.mean(r[f"{k}_top1"] for r in rs) for k in ("best", "final")}
            for name, rs in runs.items()}
    cost = {name: {k: m[k] - mean[LOSSLESS][k] for k in m} for name, m in mean.items() if name != LOSSLESS}
    return {"recipe": str(recipe), "epochs": spec.epochs, "seeds": seeds, "workers": workers, "runs": runs,
            "mean_top1": mean, "cost_pt": cost, "settings": settings}


def unavailable(recipe: str | Path, overrides: list[str], seeds: int, epochs: float | None) -> str | None:
    """Why the accuracy runs could not train (checked before any timed run, not after them), or None. No runs
    (seeds 0) need nothing."""
    if seeds < 0:
        return f"--accuracy-seeds must be >= 0 (0 skips the accuracy runs), got {seeds}"
    if not seeds:
        return None
    if epochs is not None and epochs <= 0:
        return f"--accuracy-epochs must be > 0, got {epochs:g}"
    data_dir = Path(config.load(recipe, overrides).data.dir)
    if not (data_dir / "train").is_dir() and data_dir.name not in embedded.SETS:
        return (f"the accuracy runs train {recipe} on {data_dir}, which has no train/ folder (the embedded sets, "
                f"{', '.join(embedded.SETS)}, are written where a recipe names them); --accuracy-seeds 0 skips them")
    return None


def table(acc: dict) -> str:
    """The accuracy runs as a markdown table: each format's mean best and final top-1 over the seeds, and its cost
    against uncompressed in points."""
    from .report import markdown_table
    rows = []
    for name, runs in acc["runs"].items():
        cost, mean = acc["cost_pt"].get(name), acc["mean_top1"][name]
        rows.append({"format": name, "seeds": ", ".join(str(r["seed"]) for r in runs),
                     "best": f"{mean['best']:.2f}", "final": f"{mean['final']:.2f}",
                     "cost_best": f"{cost['best']:+.2f}" if cost else "reference",
                     "cost_final": f"{cost['final']:+.2f}" if cost else "reference"})
    return (f"Accuracy of the wire formats ({acc['recipe']}, {acc['epochs']:g} epochs, {acc['workers']} workers on "
            f"one host, seeds as listed; validation top-1 %, means over the seeds):\n\n" +
            markdown_table(rows, [("format", "wire format"), ("seeds", "seeds"), ("best", "best top-1"),
                                  ("final", "final top-1"), ("cost_best", "best vs none, pt"),
                                  ("cost_final", "final vs none, pt")]))
