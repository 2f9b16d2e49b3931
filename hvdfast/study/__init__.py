"""`hvdfast study SPEC`: what each lever costs on your model and data. A grid of short trainings around one recipe
(optimizer x global batch, precision, workers; launch/studies/*.yaml), every cell at the same epoch budget, each
one a real `hvdfast launch` job; one table (study.md, study.csv) and one PNG (study.png) with top-1 (best, final)
and the wall time to the target beside each cell.

Cells run one after another through `hvdfast launch TARGET` (local: horovodrun on this host; mpirun, hosts, slurm
or pbs on a cluster, with --launch passing that target's options). A cell is done when its run directory holds a
summary and was trained with the overrides the spec gives it now, so rerunning the same command skips finished cells
and trains the rest (a half-finished grid resumes; a cell whose settings changed is trained again).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import config
from . import grid, report

TARGETS = ("local", "mpirun", "hosts", "slurm", "pbs")


def _hvdfast() -> list[str]:
    exe = Path(sys.executable).with_name("hvdfast")
    return [str(exe)] if exe.exists() else [shutil.which("hvdfast") or "hvdfast"]


def launch_cmd(spec: grid.Spec, cell: grid.Cell, run_dir: Path, target: str, extra: list[str]) -> list[str]:
    """The one `hvdfast launch` command that trains a cell (the launch module builds the launcher from it)."""
    workers = (["--np", str(cell.workers)] if target in ("local", "mpirun", "hosts")
               else ["--tasks-per-node", str(cell.workers), "--nodes", "1"])
    # a batch script per cell, in the cell's folder; slurm cells are followed to their end (through requeues)
    script = ["--script", str(Path(run_dir) / f"{target}.sh")] if target in ("slurm", "pbs") else []
    wait = ["--wait"] if target == "slurm" else []
    return [*_hvdfast(), "launch", target, "--config", spec.recipe, *workers, *script, *wait, *extra,
            *grid.overrides(spec, cell, run_dir)]


def _ensure_data(spec: grid.Spec) -> None:
    if not spec.data:
        return
    data_dir = Path(config.load(spec.recipe, list(spec.overrides)).data.dir)
    if not (data_dir / "train").is_dir():
        from ..data import embedded
        counts = embedded.write(spec.data, data_dir)
        print(f"hvdfast study: wrote the embedded {spec.data} set to {data_dir} ({counts['train']} train / "
              f"{counts['val']} val images)", flush=True)


def _done(spec: grid.Spec, cell: grid.Cell, run_dir: Path) -> bool:
    """A cell is done when its run finished (a summary) with the overrides the spec gives it now: after an edit of
    the spec, a cell of the same name trained under other settings is trained again."""
    try:
        recorded = json.loads((run_dir / "cell.json").read_text())["overrides"]
    except (OSError, ValueError, KeyError):
        return False
    return recorded == grid.overrides(spec, cell, run_dir) and report.summary(run_dir) is not None


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[-200:]
    return lines[-1][-200:] if lines else "no output"


def train_cells(spec: grid.Spec, todo: list[grid.Cell], out: Path, target: str = "local",
                extra: list[str] = ()) -> dict[str, str]:
    """Train `todo` one after another, each through `hvdfast launch TARGET` into out/cells/<cell id>/ (its command
    and output in launch.log there), one line per cell; returns {cell id: the last error line} of the cells that
    failed. The study's loop, and `hvdfast bench cluster`'s accuracy runs. Ctrl-C: KeyboardInterrupt(the cell's
    id), its folder left as it was."""
    if todo:
        _ensure_data(spec)
    failed: dict[str, str] = {}
    for i, cell in enumerate(todo, 1):
        run_dir = out / "cells" / cell.id
        cmd = launch_cmd(spec, cell, run_dir, target, list(extra))
        if run_dir.exists():  # an interrupted cell restarts: its times must come from one uninterrupted run
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "cell.json").write_text(json.dumps({"cell": cell.id, "axis": cell.axis,
                                                       "overrides": grid.overrides(spec, cell, run_dir)}))
        t0 = time.time()
        with (run_dir / "launch.log").open("w") as log:
            log.write(shlex.join(cmd) + "\n")
            log.flush()
            try:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            except KeyboardInterrupt:  # Ctrl-C reaches the launcher too (same process group)
                raise KeyboardInterrupt(cell.id) from None
        r = report.row(cell, run_dir, "done" if rc == 0 else f"failed (exit {rc})")
        if rc != 0 or r["status"] != "done":
            failed[cell.id] = _last_error(run_dir / "launch.log")
            print(f"[{i}/{len(todo)}] {cell.id}: FAILED (exit {rc}): {failed[cell.id]}", flush=True)
            continue
        t = r["time_to_target_s"]
        print(f"[{i}/{len(todo)}] {cell.id}: best {r['best_top1']}%, final {r['final_top1']}%, "
              f"{'not reached' if t is None or not spec.target_top1 else f'{t} s to {spec.target_top1:g}%'}, "
              f"{r['img_s']} img/s ({time.time() - t0:.0f} s with start-up)", flush=True)
    return failed


def check_launch(spec: grid.Spec, cell: grid.Cell, out: Path, target: str, extra: list[str]) -> None:
    """The first pending cell's launch command, dry-run: an option the target refuses (a --launch option it does not
    act on, an elastic recipe under mpirun) stops the study in one line, not once per cell."""
    p = subprocess.run([*launch_cmd(spec, cell, out / "cells" / cell.id, target, extra), "--dry-run"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        why = ((p.stderr.strip() or p.stdout.strip()).splitlines() or ["no output"])[-1]
        raise config.ConfigError(f"hvdfast launch {target} refuses the study's cells: "
                                 f"{why.removeprefix('hvdfast: error: ')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hvdfast study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="study spec, e.g. launch/studies/mnist.yaml")
    p.add_argument("--out", help="study folder (default runs/study/<spec name>): cells/<cell>/ are the runs")
    p.add_argument("--target", choices=TARGETS, default="local", help="hvdfast launch target of every cell "
                   "(default local: horovodrun on this host; slurm cells are submitted and followed with --wait)")
    p.add_argument("--launch", default="", metavar="'OPTIONS'",
                   help="more hvdfast launch options for every cell, e.g. --launch '--cpu --time 00:20:00'")
    p.add_argument("--only", default="", metavar="TEXT", help="train only the cells whose name contains TEXT")
    p.add_argument("--report", action="store_true", help="write the table and plot from what exists; train nothing")
    p.add_argument("--dry-run", action="store_true", help="print each pending cell's command; run nothing")
    args = p.parse_args(argv)

    spec = grid.load(args.spec)
    cells = grid.cells(spec)
    out = Path(args.out or Path("runs/study") / Path(args.spec).stem)
    extra = shlex.split(args.launch)
    failed: dict[str, str] = {}
    if args.only and not any(args.only in c.id for c in cells):
        shown = ", ".join(c.id for c in cells[:6]) + (", ..." if len(cells) > 6 else "")
        raise config.ConfigError(f"--only {args.only!r} matches none of the study's {len(cells)} cells ({shown}).")
    todo = [c for c in cells if args.only in c.id and not _done(spec, c, out / "cells" / c.id)]
    if not args.report:
        if args.dry_run:
            for cell in todo:
                print(shlex.join(launch_cmd(spec, cell, out / "cells" / cell.id, args.target, extra)))
            return 0
        if todo:
            check_launch(spec, todo[0], out, args.target, extra)
        print(f"hvdfast study: {len(cells)} cells in {out}; {len(cells) - len(todo)} done, {len(todo)} to train",
              flush=True)
        try:
            failed = train_cells(spec, todo, out, args.target, extra)
        except KeyboardInterrupt as stop:
            done = sum(_done(spec, c, out / "cells" / c.id) for c in cells)
            print(f"hvdfast study: interrupted in cell {stop}; the same command trains it again and then the rest "
                  f"({done} of {len(cells)} cells are done)", file=sys.stderr, flush=True)
            return 130
    rows = []
    for c in cells:
        run_dir = out / "cells" / c.id
        status = f"failed: {failed[c.id]}" if c.id in failed else ("not run" if not run_dir.exists() else
                                                                  "incomplete")
        r = report.row(c, run_dir, status)
        if r["status"] == "done" and not _done(spec, c, run_dir):
            r = {k: v for k, v in r.items() if k in ("cell", "axis", "optimizer", "variant", "global_batch",
                                                     "per_worker", "accum", "precision", "workers")}
            r["status"] = "stale (the spec changed)"
        rows.append(r)
    paths = report.write(out, rows, spec.target_top1, f"hvdfast study {Path(args.spec).name}: "
                         f"{spec.epochs:g} epochs per cell, {spec.recipe}")
    print(paths["md"].read_text(), end="")
    print(f"hvdfast study: wrote {paths['md']}, {paths['csv']} and {paths['png']}", flush=True)
    missing = [r["cell"] for r in rows if r["status"] != "done"]
    if missing:
        print(f"hvdfast study: {len(missing)} cell(s) without a result ({', '.join(missing[:6])}"
              f"{', ...' if len(missing) > 6 else ''}); rerun the same command to train them.", file=sys.stderr)
        return 1
    return 0
