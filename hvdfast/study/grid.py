"""A study spec (YAML) -> the grid of cells to train. Pure: no processes, no files but the spec.

A spec names a base recipe and the levers to pull around it; each lever varies alone from the base point:
  batch x optimizer  every optimizer at every global batch (precision and workers at the base)
  precision          each precision at the base optimizer and batch
  workers            each worker count at the base optimizer and batch (the global batch stays the same)
  variants           named override lists at the base point (recipe search: image size, epochs, LR, ...)
Cells that coincide (the base point appears on every axis) are trained once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, read_yaml


@dataclass(frozen=True)
class Spec:
    recipe: str                          # training recipe every cell starts from
    epochs: float                        # fixed epoch budget of every cell
    target_top1: float = 0.0             # percent; each cell reports its wall time to it
    workers: int = 2                     # workers of every cell but the workers axis
    batch: int = 64                      # the base global batch (images per optimizer step)
    max_batch_per_worker: int = 256      # above this, backward_passes_per_step accumulates to reach the batch
    precision: str = "auto"              # the base precision
    optimizers: dict = field(default_factory=dict)   # name -> overrides making the recipe that optimizer; first =
                                                     # the base
    batches: tuple = ()                  # global batches of the batch x optimizer axis
    precisions: tuple = ()               # the precision axis
    worker_counts: tuple = ()            # the workers axis
    variants: dict = field(default_factory=dict)     # name -> overrides at the base point
    overrides: tuple = ()                # applied to every cell
    data: str = ""                       # embedded data set to write if the recipe's data.dir is missing


@dataclass(frozen=True)
class Cell:
    axis: str                            # batch | precision | workers | variant | base
    optimizer: str
    batch: int                           # global batch
    precision: str
    workers: int
    variant: str = ""
    per_worker: int = 0                  # images per worker per backward pass
    accum: int = 1                       # backward passes per optimizer step

    @property
    def id(self) -> str:
        v = f"-{self.variant}" if self.variant else ""
        return f"{self.optimizer}-b{self.batch}-{self.precision}-w{self.workers}{v}"


def load(path: str | Path) -> Spec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study spec '{p}' not found (examples: launch/studies/*.yaml).")
    raw = read_yaml(p, "study spec") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"study spec '{p}' must be a YAML mapping (recipe, epochs, ...), got "
                          f"{type(raw).__name__}.")
    known = set(Spec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown study key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}.")
    for key in ("recipe", "epochs"):
        if key not in raw:
            raise ConfigError(f"{p}: the study needs '{key}'.")
    for key in ("batches", "precisions", "worker_counts", "overrides"):
        raw[key] = tuple(raw.get(key) or ())
    raw["optimizers"] = {k: tuple(v or ()) for k, v in (raw.get("optimizers") or {"recipe": ()}).items()}
    raw["variants"] = {k: tuple(v or ()) for k, v in (raw.get("variants") or {}).items()}
    return Spec(**raw)


def _split(spec: Spec, batch: int, workers: int) -> tuple[int, int]:
    """(images per worker per pass, passes per step) for a global batch: the fewest passes that keep a worker's
    batch at or under max_batch_per_worker."""
    if batch % workers:
        raise ConfigError(f"global batch {batch} does not split over {workers} workers.")
    per, accum = batch // workers, 1
    while per > spec.max_batch_per_worker:
        if per % 2:
            raise ConfigError(f"global batch {batch} over {workers} workers cannot be accumulated to at most "
                              f"{spec.max_batch_per_worker} per worker in powers of two.")
        per, accum = per // 2, accum * 2
    return per, accum


def cells(spec: Spec) -> list[Cell]:
    base_opt = next(iter(spec.optimizers))
    out: dict[str, Cell] = {}

    def add(axis, opt, batch, precision, workers, variant=""):
        per, accum = _split(spec, batch, workers)
        c = Cell(axis, opt, batch, precision, workers, variant, per, accum)
        out.setdefault(c.id, c)

    add("base", base_opt, spec.batch, spec.precision, spec.workers)
    for opt in spec.optimizers:
        for b in spec.batches:
            add("batch", opt, b, spec.precision, spec.workers)
    for prec in spec.precisions:
        add("precision", base_opt, spec.batch, prec, spec.workers)
    for w in spec.worker_counts:
        add("workers", base_opt, spec.batch, spec.precision, w)
    for name in spec.variants:
        add("variant", base_opt, spec.batch, spec.precision, spec.workers, name)
    return list(out.values())


def overrides(spec: Spec, cell: Cell, run_dir: str | Path) -> list[str]:
    """The `hvdfast train` overrides of one cell, later ones winning: spec-wide, the budget, the optimizer's, the
    variant's (which may change the budget), then what defines the cell. A cell starts in an empty run_dir (the
    study trains an interrupted cell again); a batch job that requeues itself continues from its checkpoint
    (train.resume=auto, its training time carried over), as `hvdfast launch slurm|pbs` requires."""
    return [*spec.overrides, f"train.epochs={spec.epochs}", f"train.target_top1={spec.target_top1}",
            *spec.optimizers[cell.optimizer], *spec.variants.get(cell.variant, ()),
            f"data.batch_size={cell.per_worker}", f"horovod.backward_passes_per_step={cell.accum}",
            f"train.precision={cell.precision}", f"train.run_dir={run_dir}"]
