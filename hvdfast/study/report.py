"""A study's results: one row per cell (from each cell's metrics.jsonl and config.yaml), written as a Markdown
table, a CSV and one PNG with a panel per lever."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .. import config
from ..optim import schedule
from .grid import Cell

COLUMNS = ("cell", "axis", "optimizer", "variant", "global_batch", "per_worker", "accum", "precision", "workers",
           "steps", "peak_lr", "best_top1", "final_top1", "time_to_target_s", "train_time_s", "img_s", "status")


def summary(run_dir: Path) -> dict | None:
    """The run's summary record, or None while it has none (not run, running, or failed)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        if '"summary"' in line:
            rec = json.loads(line)
            if rec.get("kind") == "summary":
                found = rec
    return found


def row(cell: Cell, run_dir: Path, status: str) -> dict:
    r = {"cell": cell.id, "axis": cell.axis, "optimizer": cell.optimizer, "variant": cell.variant,
         "global_batch": cell.batch, "per_worker": cell.per_worker, "accum": cell.accum,
         "precision": cell.precision, "workers": cell.workers, "status": status}
    s = summary(run_dir)
    if s:
        r.update(steps=s["steps"], best_top1=round(s["best_top1"], 2), final_top1=round(s["final_top1"], 2),
                 time_to_target_s=None if s["time_to_target_s"] is None else round(s["time_to_target_s"], 1),
                 train_time_s=round(s["train_time_s"], 1), img_s=round(s["mean_img_s"], 1), status="done")
    if (run_dir / "config.yaml").is_file():
        cfg = config.load(run_dir / "config.yaml")
        r["peak_lr"] = float(f"{schedule.peak_lr(cfg.optim, cell.batch):.4g}")
    return r


def _fmt(v) -> str:
    return "-" if v is None or v == "" else str(v)


def markdown(rows: list[dict], target: float) -> str:
    head = ["cell", "lever", "global batch", "per worker x passes", "precision", "workers", "steps", "peak lr",
            "best top-1 %", "final top-1 %", f"s to {target:g}%", "train s", "img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        t = r.get("time_to_target_s")
        t = "not reached" if r["status"] == "done" and t is None else _fmt(t)
        lines.append("| " + " | ".join([
            r["cell"], r["axis"] + (f" ({r['variant']})" if r["variant"] else ""), str(r["global_batch"]),
            f"{r['per_worker']} x {r['accum']}", r["precision"], str(r["workers"]), _fmt(r.get("steps")),
            _fmt(r.get("peak_lr")), _fmt(r.get("best_top1")), _fmt(r.get("final_top1")) if r["status"] == "done"
            else r["status"], t, _fmt(r.get("train_time_s")), _fmt(r.get("img_s"))]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], target: float, out: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    base = next((r for r in done if r["axis"] == "base"), done[0] if done else None)
    panels = []
    if any(r["axis"] == "batch" for r in done):
        panels += ["top1_vs_batch", "time_vs_batch", "speed_vs_batch"]
    if len({r["precision"] for r in done if r["axis"] in ("precision", "base")}) > 1:
        panels.append("precision")
    if len({r["workers"] for r in done if r["axis"] in ("workers", "base")}) > 1:
        panels.append("workers")
    if any(r["axis"] == "variant" for r in done):
        panels.append("variants")
    cols = min(3, max(1, len(panels)))
    rows_n = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    on_batch_axis = [r for r in done if r["axis"] in ("batch", "base") and not r["variant"]
                     and r["precision"] == base["precision"] and r["workers"] == base["workers"]] if base else []
    for ax, panel in zip(axes.flat, panels):
        if panel.endswith("_vs_batch"):
            keys = {"top1_vs_batch": ("final_top1", "best_top1"), "time_vs_batch": ("time_to_target_s",),
                    "speed_vs_batch": ("img_s",)}[panel]
            for i, opt in enumerate(dict.fromkeys(r["optimizer"] for r in on_batch_axis)):
                for key, style in zip(keys, ("o-", "x--")):
                    pts = sorted((r["global_batch"], r[key]) for r in on_batch_axis
                                 if r["optimizer"] == opt and r[key] is not None)
                    if pts:
                        ax.plot(*zip(*pts), style, color=f"C{i}", label=opt + (" (best)" if key == "best_top1"
                                                                                  else ""))
            ax.set_xscale("log", base=2)
            ax.set(xlabel="global batch", title={"top1_vs_batch": "top-1 %: final (o-), best (x--)",
                                                 "time_vs_batch": f"wall s to {target:g}% (absent: not reached)",
                                                 "speed_vs_batch": "images/s, all workers"}[panel])
            ax.legend(fontsize=8)
            continue
        if panel == "precision":
            pick = [r for r in done if r["axis"] in ("precision", "base") and not r["variant"]
                    and r["workers"] == base["workers"]]
            labels = [r["precision"] for r in pick]
        elif panel == "workers":
            pick = sorted((r for r in done if r["axis"] in ("workers", "base") and not r["variant"]
                           and r["precision"] == base["precision"]), key=lambda r: r["workers"])
            labels = [f"{r['workers']} worker(s)" for r in pick]
        else:
            pick = [r for r in done if r["axis"] in ("variant", "base")]
            labels = [r["variant"] or "recipe" for r in pick]
        ax.bar(labels, [r["img_s"] for r in pick], color="tab:blue")
        ax.set(title=f"{panel}: images/s; final top-1, s to {target:g}%", ylabel="img/s",
               ylim=(0, 1.25 * max(r["img_s"] for r in pick)))
        for i, r in enumerate(pick):
            t = r["time_to_target_s"]
            ax.annotate(f"{r['final_top1']}%\n{'not reached' if t is None else f'{t} s'}", (i, r["img_s"]),
                        ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write(out_dir: Path, rows: list[dict], target: float, title: str) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "study.md", "csv": out_dir / "study.csv", "png": out_dir / "study.png"}
    paths["md"].write_text(markdown(rows, target))
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, target, paths["png"], title)
    return paths
