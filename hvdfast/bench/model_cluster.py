"""`hvdfast bench model --cluster FILE... [--fit FILE...]`: the scaling model fitted on `hvdfast bench cluster`'s
own runs.

On the emulated cluster (hosts that are network namespaces of one machine, one worker each, a shaped link) the
paper model of model.py misses what dominates there: the cores that compute also run the TCP stack, the reduction
and any compression, so communicating costs compute time even when the wire is idle. The step of one wire format
over one link is

    step = s T_c (1 + c(family, format)) + max(0, bytes / (eta(family) * rate) - b s T_c)

measured:  T_c       the same worker alone on one host (the run's compute limit);
           bytes     what each worker sent per step (counted by the benchmark; the ring's 2 (N-1)/N is in them);
           c         what that wire format costs the cores with the link out of the way, as a share of the
                     compute: (step - s T_c) / (s T_c), the median over its points on the fast links (unlimited
                     and 10gbit; else the fastest link it was run on);
                     a share rather than seconds, so that a fit carries over to a day when the machine runs at
                     another speed (drift here is up to 1.7x between days);
           rate      the link preset x 0.97 (tbf's measured delivery on these veths, README);
           s         what computing together costs each worker: hosts x (one worker alone, img/s) / (the floor:
                     every host's worker at once, never communicating, img/s summed), from the floor measured
                     beside each link (reports since 2026-11-26); 4 emulated hosts time-sharing 2 cores lose more
                     than 2x, and cores of their own still share the memory system. Reports without a floor:
                     hosts x threads / cores, at least 1 (assumed);
assumed:   b = 2/3   the share of T_c (the backward pass) that communication can overlap;
fitted:    eta       per transport family (hvdfast over Horovod's MPI controller, hvdfast-gloo over its Gloo one,
                     hvdfast-recursive_doubling over MPI with that allreduce algorithm forced; plain Horovod: MPI
                     with its per-tensor fusion; DDP: Gloo), the fraction of the line rate it achieves, from the
                     100mbit points that send more than 10 MB (where the wire dominates).
Every other point (1gbit, 10gbit, and the slow-link points with little traffic) is a prediction. With --fit, c
and eta come from the --fit reports alone and every point of the --cluster reports is a prediction: the check on
runs the model has not seen (another day, another number of hosts).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from .cluster import split_variant

LINK_RATE = {"100mbit": 100e6 / 8, "1gbit": 1e9 / 8, "10gbit": 10e9 / 8, "unlimited": None}  # bytes/s
TBF_DELIVERY = 0.97        # measured: `tc qdisc ... tbf rate 1gbit` on a veth pair carried 0.97 Gbit/s
OVERLAP = 2 / 3            # assumed: the backward pass's share of the compute, which communication may overlap
FIT_LINK, FIT_MIN_MB = "100mbit", 10.0
SPEED_ORDER = ("unlimited", "10gbit", "1gbit", "100mbit")
# c is read from these links' points: ResNet-50's 102 MB at 10 Gbit/s take 0.15 s at MPI's 0.55 of the line rate,
# under a third of the backward pass. The median over both links' points (bench rows and the tuner's short timings):
# fitted on one run and predicting another, 90 of 108 points within 10% over three pairs of 2026-11-26's runs,
# against 86 from the fastest link's points alone (largest errors 21 / 18 / 12% against 31 / 27 / 13%).
FAST_LINKS = ("unlimited", "10gbit")


@dataclass(frozen=True)
class Point:
    source: str            # which report (and "tune" for hvdfast tune's candidates on that link)
    link: str
    family: str            # hvdfast (Horovod's MPI controller) | hvdfast-gloo | hvdfast-ALGORITHM | horovod | ddp
    wire_format: str       # none | fp16 | bf16 | powersgd (hvdfast, horovod) or the DDP hook
    step_s: float          # measured step time
    wire_mb: float         # MB each worker sent per step
    compute_s: float       # T_c: the same worker alone
    share: float = 1.0     # s: the slowdown of computing together (measured: the floor; else threads per core)


def points(report: dict, source: str) -> list[Point]:
    """Every measured (link, variant, wire format) of one `hvdfast bench cluster` JSON report, including the
    candidates `hvdfast tune --hosts` timed on each link."""
    by_link = report.get("alone_by_link") or {}  # reports since the limit is measured beside each link

    def compute(link: str) -> float:  # T_c: the worker alone, measured beside that link's runs where it was
        return (by_link.get(link) or report["alone"])["hvdfast"]["step_s"]

    rows = report["rows"]
    # reports before the hosts/threads fields were recorded: 2 hosts x 1 thread on this 2-core machine
    hosts = report.get("hosts", 2)
    assumed = max(1.0, hosts * report.get("threads", 1) / report["hardware"].get("cores", 2))
    floors = report.get("floor") or {}

    def share(link: str) -> float:  # s: measured where the floor was measured beside the link, else assumed
        floor, alone = floors.get(link), by_link.get(link)
        return hosts * alone["hvdfast"]["img_s"] / floor["img_s"] if floor and alone else assumed
    images_per_step = rows[0]["img_s"] * rows[0]["step_s"]  # the same for every variant of a report
    tuned = report.get("tuned") or {}

    def hvdfast_family(controller: str | None, mpi_allreduce: str | None = None) -> str:
        # hvdfast's transport: its controller's, and under MPI the allreduce algorithm where one was forced (at 2
        # ranks over TCP Open MPI's own choice reached about half the line rate, recursive doubling about all)
        if controller == "gloo":
            return "hvdfast-gloo"
        return "hvdfast" if mpi_allreduce in (None, "auto") else f"hvdfast-{mpi_allreduce}"

    out = []
    for r in rows:
        base, _ = split_variant(r["variant"])  # hvdfast@KEY=VALUE (an A/B row): hvdfast with other settings
        family = base if base in ("hvdfast", "horovod") else "ddp"
        if family == "hvdfast":  # reports before rows recorded it: the controller tune chose on the link, or MPI
            family = hvdfast_family(r.get("controller") or
                                    (tuned.get(r["link"]) or {}).get("launcher", {}).get("controller"),
                                    r.get("mpi_allreduce"))
        fmt = r["settings"] if family != "ddp" else (r["settings"] or "none")
        out.append(Point(source, r["link"], family, fmt, r["step_s"], r["wire_mb_per_step"], compute(r["link"]),
                         share(r["link"])))
    for link, doc in tuned.items():
        for c in doc.get("candidates", []):
            out.append(Point(f"{source} tune", link, hvdfast_family(c.get("controller"), c.get("mpi_allreduce")),
                             c["compression"],
                             images_per_step / c["img_s"], c["wire_mb"], compute(link), share(link)))
    return out


def load(paths) -> list[Point]:
    """Every point of these reports; a file that is not a `bench cluster` JSON report stops with one line."""
    pts = []
    for p in paths:
        try:
            pts += points(json.loads(Path(p).read_text()), Path(p).stem)
        except OSError as exc:
            raise SystemExit(f"hvdfast bench model: cannot read {p}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise SystemExit(f"hvdfast bench model: {p} is not an `hvdfast bench cluster` JSON report "
                             f"(runs/bench/cluster-*.json): {type(exc).__name__}: {exc}") from None
    return pts


def step_time(p: Point, cpu_share: float, eta: float, overlap: float = OVERLAP) -> float:
    rate = LINK_RATE[p.link]
    busy = p.share * p.compute_s
    wire = 0.0 if rate is None else p.wire_mb * 1e6 / (eta * rate * TBF_DELIVERY)
    return busy * (1 + cpu_share) + max(0.0, wire - overlap * busy)


def _fits_c(pts: list[Point], key: tuple[str, str]) -> list[Point]:
    """The points of one (family, format) that c is read from: every point on the fast links (FAST_LINKS, where
    the wire time is a fraction of the backward pass it hides behind), else those on the fastest link it ran on."""
    mine = [p for p in pts if (p.family, p.wire_format) == key]
    fast = [p for p in mine if p.link in FAST_LINKS]
    if fast:
        return fast
    fastest = min(SPEED_ORDER.index(p.link) for p in mine)
    return [p for p in mine if SPEED_ORDER.index(p.link) == fastest]


def fit(pts: list[Point], overlap: float = OVERLAP) -> tuple[dict, dict]:
    """(c per (family, format), eta per family): c from each format's points on the fast links (median), then eta
    solved on each slow-link, high-traffic point (median per family)."""
    cpu: dict = {}
    for key in {(p.family, p.wire_format) for p in pts}:
        cpu[key] = statistics.median(p.step_s / (p.share * p.compute_s) - 1 for p in _fits_c(pts, key))
    eta: dict = {}
    for family in sorted({p.family for p in pts}):
        solved = []
        for p in pts:
            if p.family == family and p.link == FIT_LINK and p.wire_mb > FIT_MIN_MB:
                busy = p.share * p.compute_s
                exposed = p.step_s - busy * (1 + cpu[(family, p.wire_format)]) + overlap * busy
                if exposed > 0:
                    solved.append(p.wire_mb * 1e6 / (LINK_RATE[FIT_LINK] * TBF_DELIVERY) / exposed)
        eta[family] = statistics.median(solved) if solved else 1.0
    return cpu, eta


def check(pts: list[Point], cpu: dict, eta: dict, fitted_here: bool = True) -> list[dict]:
    """Measured against modelled, each point marked by what it was used for (fitted_here=False: the fit came from
    other reports, so every point is a prediction; points whose family or format the fit never saw are left out)."""
    rows = []
    fits_c = {k: _fits_c(pts, k) for k in {(p.family, p.wire_format) for p in pts}}
    for p in pts:
        key = (p.family, p.wire_format)
        if key not in cpu or p.family not in eta:
            continue
        pred = step_time(p, cpu[key], eta[p.family])
        role = ("predicted" if not fitted_here else
                "fits c" if p in fits_c[key] else
                "fits eta" if p.link == FIT_LINK and p.wire_mb > FIT_MIN_MB else "predicted")
        rows.append({"source": p.source, "link": p.link, "family": p.family, "format": p.wire_format,
                     "wire_mb": p.wire_mb, "measured_eff": p.share * p.compute_s / p.step_s,
                     "model_eff": p.share * p.compute_s / pred, "error": pred / p.step_s - 1, "role": role})
    return rows


def main(paths, fit_paths=None) -> int:
    from .report import markdown_table
    pts = load(paths)
    cpu, eta = fit(load(fit_paths) if fit_paths else pts)
    rows = check(pts, cpu, eta, fitted_here=not fit_paths)
    print(("Fitted on " + ", ".join(Path(f).stem for f in fit_paths) + ": " if fit_paths else "Fitted: ") +
          "eta (fraction of the shaped line rate reached) " +
          ", ".join(f"{f} {e:.2f}" for f, e in sorted(eta.items())) + "; c (CPU cost per step, share of T_c) " +
          ", ".join(f"{f}/{w} {t:.3f}" for (f, w), t in sorted(cpu.items())))
    print("efficiency here: the worker's compute when every host computes at once (T_c x s; s from the floor where "
          "it was measured, else threads per core) over the step")
    print(markdown_table(rows, [("source", "report"), ("link", "link"), ("family", "family"), ("format", "format"),
                                ("wire_mb", "MB/step"), ("measured_eff", "measured eff"),
                                ("model_eff", "model eff"), ("error", "step error"), ("role", "point")]))
    unseen = sorted({f"{p.family}/{p.wire_format}" for p in pts
                     if (p.family, p.wire_format) not in cpu or p.family not in eta})
    if unseen:
        print(f"\nnot predicted (no such points in the fit): {', '.join(unseen)}")
    predicted = [r for r in rows if r["role"] == "predicted"]
    within = sum(abs(r["error"]) <= 0.10 for r in predicted)
    print(f"\n{within} of {len(predicted)} predicted points within 10% of the measured step time "
          f"(largest error {max((abs(r['error']) for r in predicted), default=0):.1%})")
    return 0
