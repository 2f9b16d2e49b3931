"""`hvdfast plot RUN_DIR`: loss, top-1 and img/s curves from metrics.jsonl as one PNG."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: str, out: str | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        from .data.folder import DataError
        raise DataError(f"no metrics.jsonl in '{run_dir}'; point hvdfast plot at a run directory of hvdfast train.")
    rows, unreadable = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:  # a line cut short (a run killed mid-write) or not ours
            row = None
            unreadable += 1
        if isinstance(row, dict):
            rows.append(row)
    if unreadable:
        print(f"hvdfast plot: skipped {unreadable} unreadable line(s) of {path} (a run stopped mid-write?)",
              file=sys.stderr)
    rows = current(rows)
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train and not val:  # an empty figure said nothing either
        from .data.folder import DataError
        raise DataError(f"{path} holds no training or validation records yet (the run has not logged its first "
                        f"step, train.log_every); plot it once it has.")
    # images seen: the axis that stays one run's across a resume or elastic reset at another world size (steps are
    # renumbered there); metrics.jsonl of hvdfast before 2026-12-07 has steps only
    x = "images_seen" if all("images_seen" in r for r in train + val) else "step"
    xlabel = "images seen (all workers)" if x == "images_seen" else "step"
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].plot([r[x] for r in train], [r["loss"] for r in train], label="train")
    ax[0].plot([r[x] for r in val], [r["loss"] for r in val], "o-", label="val")
    ax[0].set(title="loss", xlabel=xlabel)
    ax[1].plot([r[x] for r in train], [r["top1"] for r in train], label="train")
    ax[1].plot([r[x] for r in val], [r["top1"] for r in val], "o-", label="val")
    ax[1].set(title="top-1 (%)", xlabel=xlabel)
    ax[2].plot([r[x] for r in train], [r["img_s"] for r in train])
    ax[2].set(title="images/s (all workers)", xlabel=xlabel)
    for a in ax[:2]:
        a.legend()
    fig.tight_layout()
    target = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def current(rows: list[dict]) -> list[dict]:
    """The records of the run as it stands: a `start` record (a fresh start, a resume, an elastic reset) supersedes
    what earlier attempts logged beyond its position (metrics.Reporter.start; TensorBoard purges the same)."""
    kept: list[dict] = []
    for r in rows:
        if r.get("kind") == "start":
            seen = r.get("images_seen", 0)
            kept = [k for k in kept if seen and k.get("images_seen", -1) <= seen]  # (a fresh start: none)
        kept.append(r)
    return kept
