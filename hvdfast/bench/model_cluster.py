"""`hvdfast bench model --cluster FILE...`: the scaling model fitted on `hvdfast bench cluster`'s own runs.

On the emulated cluster (2 hosts, one worker and one core each, a shaped link) the paper model of model.py misses
what dominates there: the cores that compute also run the TCP stack, the reduction and any compression, so
communicating costs compute time even when the wire is idle. The step of one wire format over one link is

    step = T_c + T_cpu(family, format) + max(0, bytes / (eta(family) * rate) - b * T_c)

measured:  T_c       the same worker alone on one host (the run's compute limit);
           bytes     what each worker sent per step (counted by the benchmark);
           T_cpu     what that wire format costs the cores with the link out of the way: step - T_c on the
                     fastest link it was run on (unlimited, else 10gbit);
           rate      the link preset x 0.97 (tbf's measured delivery on these veths, README);
assumed:   b = 2/3   the share of T_c (the backward pass) that communication can overlap;
fitted:    eta       per transport family (hvdfast: Horovod's MPI controller here; plain Horovod: MPI with its
                     per-tensor fusion; DDP: Gloo), the fraction of the line rate it achieves, from the 100mbit
                     points that send more than 10 MB (where the wire dominates).
Every other point (1gbit, 10gbit, and the slow-link points with little traffic) is a prediction.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

LINK_RATE = {"100mbit": 100e6 / 8, "1gbit": 1e9 / 8, "10gbit": 10e9 / 8, "unlimited": None}  # bytes/s
TBF_DELIVERY = 0.97        # measured: `tc qdisc ... tbf rate 1gbit` on a veth pair carried 0.97 Gbit/s
OVERLAP = 2 / 3            # assumed: the backward pass's share of the compute, which communication may overlap
FIT_LINK, FIT_MIN_MB = "100mbit", 10.0
SPEED_ORDER = ("unlimited", "10gbit", "1gbit", "100mbit")


@dataclass(frozen=True)
class Point:
    source: str            # which report (and "tune" for hvdfast tune's candidates on that link)
    link: str
    family: str            # hvdfast | horovod | ddp
    wire_format: str       # none | fp16 | bf16 | powersgd (hvdfast, horovod) or the DDP hook
    step_s: float          # measured step time
    wire_mb: float         # MB each worker sent per step
    compute_s: float       # T_c: the same worker alone


def points(report: dict, source: str) -> list[Point]:
    """Every measured (link, variant, wire format) of one `hvdfast bench cluster` JSON report, including the
    candidates `hvdfast tune --hosts` timed on each link."""
    compute = report["alone"]["hvdfast"]["step_s"]
    rows = report["rows"]
    images_per_step = rows[0]["img_s"] * rows[0]["step_s"]  # the same for every variant of a report
    out = []
    for r in rows:
        family = r["variant"] if r["variant"] in ("hvdfast", "horovod") else "ddp"
        fmt = r["settings"] if family != "ddp" else (r["settings"] or "none")
        out.append(Point(source, r["link"], family, fmt, r["step_s"], r["wire_mb_per_step"], compute))
    for link, tuned in (report.get("tuned") or {}).items():
        for c in tuned.get("candidates", []):
            out.append(Point(f"{source} tune", link, "hvdfast", c["compression"], images_per_step / c["img_s"],
                             c["wire_mb"], compute))
    return out


def load(paths) -> list[Point]:
    pts = []
    for p in paths:
        pts += points(json.loads(Path(p).read_text()), Path(p).stem)
    return pts


def step_time(p: Point, cpu_s: float, eta: float, overlap: float = OVERLAP) -> float:
    rate = LINK_RATE[p.link]
    wire = 0.0 if rate is None else p.wire_mb * 1e6 / (eta * rate * TBF_DELIVERY)
    return p.compute_s + cpu_s + max(0.0, wire - overlap * p.compute_s)


def fit(pts: list[Point], overlap: float = OVERLAP) -> tuple[dict, dict]:
    """(T_cpu per (family, format), eta per family): T_cpu from each format's fastest link, then eta solved on
    each slow-link, high-traffic point (median per family)."""
    cpu: dict = {}
    for key in {(p.family, p.wire_format) for p in pts}:
        mine = [p for p in pts if (p.family, p.wire_format) == key]
        fastest = min((SPEED_ORDER.index(p.link) for p in mine))
        cpu[key] = statistics.mean(p.step_s - p.compute_s for p in mine if SPEED_ORDER.index(p.link) == fastest)
    eta: dict = {}
    for family in sorted({p.family for p in pts}):
        solved = []
        for p in pts:
            if p.family == family and p.link == FIT_LINK and p.wire_mb > FIT_MIN_MB:
                exposed = p.step_s - p.compute_s - cpu[(family, p.wire_format)] + overlap * p.compute_s
                if exposed > 0:
                    solved.append(p.wire_mb * 1e6 / (LINK_RATE[FIT_LINK] * TBF_DELIVERY) / exposed)
        eta[family] = statistics.median(solved) if solved else 1.0
    return cpu, eta


def check(pts: list[Point], cpu: dict, eta: dict) -> list[dict]:
    """Measured against modelled, each point marked by what it was used for."""
    rows = []
    fastest = {k: min(SPEED_ORDER.index(p.link) for p in pts if (p.family, p.wire_format) == k) for k in cpu}
    for p in pts:
        key = (p.family, p.wire_format)
        pred = step_time(p, cpu[key], eta[p.family])
        role = ("fits T_cpu" if SPEED_ORDER.index(p.link) == fastest[key] else
                "fits eta" if p.link == FIT_LINK and p.wire_mb > FIT_MIN_MB else "predicted")
        rows.append({"source": p.source, "link": p.link, "family": p.family, "format": p.wire_format,
                     "wire_mb": p.wire_mb, "measured_eff": p.compute_s / p.step_s, "model_eff": p.compute_s / pred,
                     "error": pred / p.step_s - 1, "role": role})
    return rows


def main(paths) -> int:
    from .report import markdown_table
    pts = load(paths)
    cpu, eta = fit(pts)
    rows = check(pts, cpu, eta)
    print("Fitted: eta (fraction of the shaped line rate reached) " +
          ", ".join(f"{f} {e:.2f}" for f, e in sorted(eta.items())) + "; T_cpu (s per step) " +
          ", ".join(f"{f}/{w} {t:.3f}" for (f, w), t in sorted(cpu.items())))
    print(markdown_table(rows, [("source", "report"), ("link", "link"), ("family", "family"), ("format", "format"),
                                ("wire_mb", "MB/step"), ("measured_eff", "measured eff"),
                                ("model_eff", "model eff"), ("error", "step error"), ("role", "point")]))
    predicted = [r for r in rows if r["role"] == "predicted"]
    within = sum(abs(r["error"]) <= 0.10 for r in predicted)
    print(f"\n{within} of {len(predicted)} predicted points within 10% of the measured step time "
          f"(largest error {max((abs(r['error']) for r in predicted), default=0):.1%})")
    return 0
