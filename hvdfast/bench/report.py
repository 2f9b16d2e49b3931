"""Hardware / versions header and JSON + markdown output shared by the benchmarks."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "host": platform.node(), "python": platform.python_version()}
    try:
        import torch
        out["torch"] = torch.__version__
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    try:
        import horovod
        out["horovod"] = horovod.__version__
    except Exception:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        out["memory_gib"] = round(mem / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    return out


def header(hw: dict) -> str:
    gpus = ", ".join(hw.get("gpus") or []) or "none"
    return (f"hardware: {hw['cpu']}, {hw['cores']} cores, {hw.get('memory_gib', '?')} GiB, GPUs: {gpus}\n"
            f"software: Python {hw['python']}, torch {hw.get('torch')}, Horovod {hw.get('horovod')}")


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_fmt(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)  # e.g. one figure per round
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return "" if v is None else str(v)


def writable(folder: str | Path, what: str = "--out-dir") -> Path:
    """`folder`, made if missing and checked writable: before a measurement that may take an hour rather than after
    it, where the results would be lost. Stops with one line otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SystemExit(f"hvdfast: cannot write {what} '{folder}': {exc.strerror or exc}") from None
    return folder


def write(out_dir: Path, name: str, result: dict, table: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    result = dict(result, command=" ".join(shlex.quote(a) for a in sys.argv), when=stamp)
    j = out_dir / f"{name}-{stamp}.json"
    j.write_text(json.dumps(result, indent=2) + "\n")
    md = out_dir / f"{name}-{stamp}.md"
    md.write_text(f"# hvdfast bench {name}\n\n`{result['command']}`\n\n```\n{header(result['hardware'])}\n```\n\n"
                  f"{table}\n")
    return j, md
