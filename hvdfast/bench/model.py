"""`hvdfast bench model`: a scaling model on paper for clusters we cannot run here.

Per optimizer step a worker computes for T_c seconds (forward + backward + update) and allreduces B gradient
bytes in ceil(B / fusion) fused calls. Of T_c, the backward pass (a fraction b, about 2/3) can overlap the
allreduce; only the rest of the communication is exposed:

    T_step = T_c + max(0, T_comm - b * T_c)        efficiency = T_c / T_step

Ring over N workers (the inter-node hop carries everything, one NIC per node):
    T_comm = 2 (N-1)/N * B / (eta * BW_net) + calls * 2 (N-1) * latency_net
Hierarchical (reduce-scatter inside each node of G GPUs, ring across the M = N/G nodes, all-gather inside):
    T_comm = 2 (G-1)/G * B / BW_intra + 2 (M-1)/M * B / (eta * BW_net) + calls * 2 (M-1) * latency_net
eta is the fraction of the link's line rate an allreduce achieves in practice. It is the one free parameter:
`--calibrate` fits it to Horovod's published 512-GPU figure and then predicts Tencent's 1024-GPU run with it.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from ..argtypes import amount, count, csv

# Link presets: (bandwidth in GB/s per direction per node, latency in seconds per message hop).
LINKS = {
    "nvlink": (150.0, 2e-6),      # NVLink within a node (V100/A100-class aggregate per GPU)
    "ib-ndr": (50.0, 1.5e-6),     # InfiniBand NDR, 400 Gbit/s
    "ib-edr": (12.5, 1.5e-6),     # InfiniBand EDR, 100 Gbit/s
    "100gbe": (12.5, 10e-6),      # 100 Gbit Ethernet / RoCE
    "25gbe": (3.125, 15e-6),      # 25 Gbit Ethernet / RoCE
}
INTRA_PCIE = 10.0                 # GB/s, PCIe 3 x16 between GPUs of a node without NVLink


@dataclass(frozen=True)
class Setup:
    compute_s: float              # T_c per step per worker
    grad_bytes: float             # B, on the wire (after compression)
    workers: int                  # N
    gpus_per_node: int            # G
    net: str                      # LINKS key for the inter-node link
    intra_gbs: float = 150.0      # intra-node bandwidth, GB/s
    eta: float = 0.5              # achieved fraction of the inter-node line rate
    backward_fraction: float = 2 / 3
    fusion_bytes: float = 64 * 2 ** 20


def comm_time(s: Setup, algorithm: str) -> float:
    bw, lat = LINKS[s.net]
    calls = max(1, math.ceil(s.grad_bytes / s.fusion_bytes))
    n, g = s.workers, min(s.gpus_per_node, s.workers)
    if n == 1:
        return 0.0
    if algorithm == "ring":
        return 2 * (n - 1) / n * s.grad_bytes / (s.eta * bw * 1e9) + calls * 2 * (n - 1) * lat
    m = max(1, n // g)
    intra = 2 * (g - 1) / g * s.grad_bytes / (s.intra_gbs * 1e9)
    inter = 0.0 if m == 1 else 2 * (m - 1) / m * s.grad_bytes / (s.eta * bw * 1e9) + calls * 2 * (m - 1) * lat
    return intra + inter


def efficiency(s: Setup, algorithm: str) -> tuple[float, float]:
    """(step seconds, scaling efficiency) for one setup."""
    t_comm = comm_time(s, algorithm)
    step = s.compute_s + max(0.0, t_comm - s.backward_fraction * s.compute_s)
    return step, s.compute_s / step


# Published reference points. Inputs marked "assumed" are our reading of the papers' hardware, not quoted figures.
HOROVOD_2018 = dict(  # Sergeev & Del Balso 2018: ResNet-101, ~90% efficiency at 512 GPUs, 25 Gbit RoCE
    name="Horovod 2018, ResNet-101, 512 x P100, 25 GbE RoCE", published=0.90,
    setup=Setup(compute_s=64 / 140.0,            # assumed: batch 64/GPU at ~140 img/s fp32 on a P100
                grad_bytes=44.5e6 * 4,           # ResNet-101 parameters, fp32 gradients
                workers=512, gpus_per_node=4, net="25gbe", intra_gbs=INTRA_PCIE),
    algorithm="ring")
TENCENT_2018 = dict(  # Jia et al. 2018: ResNet-50, hybrid (hierarchical) allreduce, ~88% at 1024 P40
    name="Tencent 2018, ResNet-50, 1024 x P40, hierarchical", published=0.88,
    setup=Setup(compute_s=64 / 190.0,            # assumed: batch 64/GPU at ~190 img/s mixed precision on a P40
                grad_bytes=25.6e6 * 2,           # ResNet-50 parameters, fp16 gradients
                workers=1024, gpus_per_node=8, net="100gbe", intra_gbs=INTRA_PCIE),  # assumed: 100 Gbit links
    algorithm="hierarchical")


def fit_eta(ref: dict) -> float:
    """The eta at which the model reproduces a published efficiency (bisection; efficiency rises with eta)."""
    lo, hi = 0.01, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        _, eff = efficiency(_with(ref["setup"], eta=mid), ref["algorithm"])
        lo, hi = (mid, hi) if eff < ref["published"] else (lo, mid)
    return (lo + hi) / 2


def _with(s: Setup, **kw) -> Setup:
    from dataclasses import replace
    return replace(s, **kw)


def calibrate() -> list[dict]:
    eta = fit_eta(HOROVOD_2018)
    rows = []
    for ref in (HOROVOD_2018, TENCENT_2018):
        step, eff = efficiency(_with(ref["setup"], eta=eta), ref["algorithm"])
        rows.append({"reference": ref["name"], "published": ref["published"], "model": eff, "eta": eta,
                     "step_ms": 1e3 * step})
    return rows


def main(argv=None) -> int:
    from .report import markdown_table
    p = argparse.ArgumentParser(prog="hvdfast bench model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compute-ms", type=amount(0, above=True), default=None,
                   help="T_c per step per worker in ms (e.g. from 'hvdfast bench train'); default: ResNet-50 "
                        "at 256 img/step on an H100-class GPU, 256/3000 s")
    p.add_argument("--grad-mb", type=amount(0), default=25.6 * 2, help="gradient MB on the wire (default RN50 fp16)")
    p.add_argument("--workers", type=csv(count(1)), default="8,64,256,1024",
                   help="worker counts, comma separated")
    p.add_argument("--gpus-per-node", type=count(1), default=8)
    p.add_argument("--link", choices=sorted(LINKS), default="ib-ndr")
    p.add_argument("--intra-gbs", type=amount(0, above=True), default=LINKS["nvlink"][0])
    p.add_argument("--eta", type=amount(0, above=True), default=None,
                   help="achieved fraction of line rate (default: calibrated)")
    p.add_argument("--calibrate", action="store_true", help="only show the calibration against published runs")
    p.add_argument("--cluster", nargs="+", metavar="JSON",
                   help="instead: fit the model to `hvdfast bench cluster` reports (runs/bench/cluster-*.json) and "
                        "compare every measured point with it (hvdfast/bench/model_cluster.py)")
    p.add_argument("--fit", nargs="+", metavar="JSON",
                   help="with --cluster: fit on these reports instead, and predict every point of --cluster's")
    args = p.parse_args(argv)
    if args.fit and not args.cluster:
        p.error("--fit needs --cluster (the reports to predict)")
    if args.cluster:
        from . import model_cluster
        return model_cluster.main(args.cluster, args.fit)
    cal = calibrate()
    print("Calibration (eta fitted to the first row, then used for the second):")
    print(markdown_table(cal, [("reference", "published run"), ("published", "published efficiency"),
                               ("model", "model"), ("eta", "eta"), ("step_ms", "step ms")]))
    if args.calibrate:
        return 0
    eta = args.eta if args.eta is not None else cal[0]["eta"]
    compute = (args.compute_ms / 1e3) if args.compute_ms else 256 / 3000.0
    rows = []
    for n in (int(x) for x in args.workers.split(",")):
        s = Setup(compute_s=compute, grad_bytes=args.grad_mb * 1e6, workers=n, gpus_per_node=args.gpus_per_node,
                  net=args.link, intra_gbs=args.intra_gbs, eta=eta)
        for alg in ("ring", "hierarchical"):
            step, eff = efficiency(s, alg)
            rows.append({"workers": n, "algorithm": alg, "comm_ms": 1e3 * comm_time(s, alg),
                         "step_ms": 1e3 * step, "efficiency": eff})
    print(f"\nPrediction: T_c {1e3 * compute:.1f} ms, {args.grad_mb:g} MB gradients, {args.link} between nodes of "
          f"{args.gpus_per_node} GPUs, eta {eta:.2f}")
    print(markdown_table(rows, [("workers", "workers"), ("algorithm", "algorithm"), ("comm_ms", "allreduce ms"),
                                ("step_ms", "step ms"), ("efficiency", "efficiency")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
