"""`hvdfast bench cluster`'s rows and report: each variant's runs on a link made one row (efficiency against the
limit measured beside the link and against the limit timed inside the run, where its step lost time against the
floor's), the rows compared with DDP's best and with plain hvdfast, and the tables, text and PNG written to
runs/bench/. Pure functions of the workers' results (bench/worker.py's), apart from `plot`."""
from __future__ import annotations

import statistics
from pathlib import Path

from ..tune import transport
from . import accuracy
from .report import markdown_table


def summarise(name: str, link: str, repeats: list[list[dict]], alone: dict, floor: dict | None,
              hosts_n: int) -> dict:
    """One row from a variant's runs on a link (each run: its ranks' results); throughputs are means over runs.
    `alone` and `floor`: that link's (mean_alone, mean_floor), measured beside its runs."""
    ranks = [r for run in repeats for r in run]
    controller, algorithm = ranks[0].get("controller", "gloo (torch)"), ranks[0].get("mpi_allreduce")
    step = statistics.mean(r["step_s"] for r in ranks)
    rounds = [sum(r["img_s"] for r in run) for run in repeats]  # each round's img/s over the hosts
    img_s = statistics.mean(rounds)
    # round i's run against round i's limit, measured minutes before it: the spread says how far the machine
    # moved between rounds (a partial round, where a run failed, gets none)
    each = ([x / (hosts_n * a["img_s"]) for x, a in zip(rounds, alone["runs"])]
            if len(alone["runs"]) == len(repeats) else [])
    return {**in_run(repeats), "link": link, "variant": name, "img_s": img_s, "img_s_rounds": rounds, "step_s": step,
            "efficiency": img_s / (hosts_n * alone["img_s"]), "efficiency_rounds": each,
            "floor_img_s": floor["img_s"] if floor else None, "vs_floor": img_s / floor["img_s"] if floor else None,
            "comm_share": max(0.0, 1 - alone["step_s"] / step),
            "comm_wait_s": statistics.mean(r["comm_wait_s"] for r in ranks) if "comm_wait_s" in ranks[0] else None,
            "wire_mb_per_step": statistics.mean(r["wire_mb_per_step"] for r in ranks),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
            "ranks_agree": all(len({r["params_sha256"] for r in run}) == 1 for run in repeats),
            "settings": ranks[0].get("compression", ranks[0].get("hook", "")), "alone_img_s": alone["img_s"],
            "controller": controller, "mpi_allreduce": algorithm, "transport": transport(controller, algorithm),
            "cpus": [r.get("cpus") for r in repeats[0]], "runs": len(repeats)}


def in_run(repeats: list[list[dict]]) -> dict:
    """Efficiency and x floor against the limit and the floor timed inside each run, between its steps (bench/
    worker.py's `interleaved`): per round, and per cycle (each of a round's steps against the limit timed just before
    it: how steady the ratio was). Empty where the runs did not interleave."""
    if not all("alone_img_s" in r for run in repeats for r in run):
        return {}
    rounds = [sum(r["img_s"] for r in run) / sum(r["alone_img_s"] for r in run) for run in repeats]
    cycles = [sum(1 / s for s in steps) / sum(1 / a for a in alone)
              for run in repeats
              for steps, alone in zip(zip(*(r["cycles"]["step_s"] for r in run)),
                                      zip(*(r["cycles"]["alone_s"] for r in run)))]
    return {**against_floor(repeats), "efficiency_in_run": statistics.mean(rounds),
            "efficiency_in_run_rounds": rounds,
            "efficiency_in_run_cycles": cycles,
            "limit_in_run_img_s": statistics.mean(sum(r["alone_img_s"] for r in run) for run in repeats),
            "floor_in_run_img_s": statistics.mean(sum(r["floor_img_s"] for r in run) for run in repeats),
            "vs_floor_in_run": statistics.mean(sum(r["img_s"] for r in run) / sum(r["floor_img_s"] for r in run)
                                               for run in repeats)}


def against_floor(repeats: list[list[dict]]) -> dict:
    """Where a run's step lost time against the floor's step timed beside it (the Horovod workers split both into
    phases; bench/worker.py's `lone_figures`): per phase, the run's mean minus the floor's, averaged over the ranks and
    rounds, in seconds per step. The parts add up to the step's loss: forward+backward slower (the communication
    running beside backward on the same cores, and whatever the gradient hooks do: PowerSGD's first products), the
    wait after backward (what backward did not hide, the rounds and decompression it leaves), and the update slower
    (the optimizer after it). Empty for the DDP peer (its step is not split) and where the runs did not
    interleave."""
    ranks = [r for run in repeats for r in run]
    if not ranks or not all("phases" in r for r in ranks):
        return {}

    def mean(side, k):
        return statistics.mean(r["phases"][side][k] for r in ranks)
    run, floor = ({k: mean(side, k) for k in ranks[0]["phases"][side]} for side in ("run", "floor"))
    return {"phases_in_run": {"run": run, "floor": floor},
            "run_step_s": run["step_s"], "floor_step_s": floor["step_s"], "lost_s": run["step_s"] - floor["step_s"],
            "lost_compute_s": run["compute_s"] - floor["compute_s"],
            "lost_wait_s": run["comm_wait_s"] - floor["comm_wait_s"],
            "lost_update_s": run["update_s"] - floor["update_s"],
            "fwd_bwd_vs_floor": run["compute_s"] / floor["compute_s"]}


def phase_table(rows: list[dict]) -> str:
    """The second look at the rows that split their steps: where each one's step went against the floor's."""
    split = [r for r in rows if "lost_s" in r]
    if not split:
        return ""
    return ("Where each step lost time against the floor's step timed beside it (seconds per step, means over the "
            "cycles and workers; the parts add up to the loss)\n\n" + markdown_table(split, [
                ("link", "link"), ("variant", "variant"), ("settings", "compression"), ("run_step_s", "run step s"),
                ("floor_step_s", "floor step s"), ("lost_s", "lost s"), ("lost_compute_s", "fwd+bwd slower s"),
                ("fwd_bwd_vs_floor", "fwd+bwd x floor"), ("lost_wait_s", "wait after backward s"),
                ("lost_update_s", "update slower s")]))


def mean_alone(runs: list[dict]) -> dict:
    step = statistics.mean(r["step_s"] for r in runs)
    return {"step_s": step, "img_s": statistics.mean(r["img_s"] for r in runs), "runs": runs}


def mean_floor(rounds: list[list[dict]]) -> dict:
    """The floor's runs (each: one result per host, computed at the same time): img/s summed over the hosts."""
    return {"img_s": statistics.mean(sum(r["img_s"] for r in run) for run in rounds), "runs": rounds}


def compare(rows: list[dict], links: list[str]) -> None:
    """Each row's img/s against DDP's best and DDP without a hook on its link, and an A/B row's
    (hvdfast@KEY=VALUE) against plain hvdfast's, round by round."""
    for link in links:
        sel = [r for r in rows if r["link"] == link]
        ddps = [r for r in sel if r["variant"].startswith("ddp")]
        base = next((r for r in sel if r["variant"] == "hvdfast"), None)
        for r in sel:
            r["vs_best_ddp"] = r["img_s"] / max(d["img_s"] for d in ddps) if ddps else None
            r["vs_ddp_default"] = next((r["img_s"] / d["img_s"] for d in ddps if d["variant"] == "ddp"), None)
            if base is not None and r["variant"].startswith("hvdfast@"):
                # A/B: each round's run against plain hvdfast's run of the same round (minutes apart)
                r["vs_hvdfast"] = r["img_s"] / base["img_s"]
                r["vs_hvdfast_rounds"] = [a / b for a, b in zip(r["img_s_rounds"], base["img_s_rounds"])]


def render(args, rows: list[dict], links: list[str], bench, alone: dict, alone_by_link: dict, floor: dict,
           tuned_docs: dict, acc: dict | None) -> tuple[str, dict]:
    """The report's text (the rows' table, each link's limit and floor, where the steps lost time, the accuracy
    costs, the tuner's reasons) and the JSON document's fields beside the hardware."""
    compare(rows, links)
    cols = [("link", "link"), ("variant", "variant"), ("settings", "compression / hook"), ("transport", "transport"),
            ("img_s", "img/s"),
            ("efficiency", "efficiency"), ("efficiency_rounds", "each round"),
            ("efficiency_in_run", "efficiency, limit in the run"), ("efficiency_in_run_rounds", "each round"),
            ("comm_share", "comm share of step"),
            ("comm_wait_s", "comm wait s"),
            ("wire_mb_per_step", "MB sent/step/worker"), ("peak_rss_mb", "peak RSS MB"),
            ("vs_floor", "x floor"), ("vs_floor_in_run", "x floor in the run"), ("vs_best_ddp", "x best DDP"),
            ("vs_ddp_default", "x DDP default"),
            ("top1_cost_pt", "top-1 cost, pt"), ("ranks_agree", "ranks agree")]
    if any("vs_hvdfast" in r for r in rows):
        cols[-1:-1] = [("vs_hvdfast", "x hvdfast"), ("vs_hvdfast_rounds", "x hvdfast, each round")]
    table = markdown_table(rows, cols)
    n_hosts = len(bench.workers)
    limits = [{"link": link, "limit": n_hosts * alone_by_link[link]["hvdfast"]["img_s"],
               "each": ", ".join(f"{n_hosts * r['img_s']:.2f}" for r in alone_by_link[link]["hvdfast"]["runs"]),
               "floor": floor[link]["img_s"] if link in floor else None,
               "floor_share": floor[link]["img_s"] / (n_hosts * alone_by_link[link]["hvdfast"]["img_s"])
               if link in floor else None} for link in links]
    table += "\n\n" + markdown_table(limits, [
        ("link", "measured before"), ("limit", "compute limit img/s (mean)"), ("each", "each round"),
        ("floor", f"floor img/s ({n_hosts} workers alone at once)"), ("floor_share", "floor / limit")])
    limit = alone["hvdfast"]["img_s"] * n_hosts
    text = (f"{args.model}, {args.image_size} px, batch {args.batch}/worker, synthetic, "
            f"{args.hosts} hosts x 1 worker x {bench.threads} thread(s), "
            + (f"each host on cores of its own ({', '.join(f'{h}: {c}' for h, c in bench.cpus.items())})"
               if bench.cpus else "the hosts sharing every core") + f", median of {args.steps} steps after "
            f"{args.warmup}, mean of {args.repeat} round(s); compute limit (one worker alone x {args.hosts}), "
            f"measured before each link in every round: {limit:.2f} img/s over all, each link's efficiency against "
            f"its own (second table)"
            + ("" if args.no_interleave else ", and against the limit and the floor timed inside each run between "
               "its steps (each host's worker alone in turn, then all alone at once, then one step of the run)")
            + f"; the bridge between the hosts "
            f"{'without' if bench.cluster.switch_filtering_off else 'WITH'} the machine's netfilter hooks\n\n{table}")
    split = phase_table(rows)
    if split:
        text += "\n\n" + split
    if acc:
        text += "\n\n" + accuracy.table(acc)
    for link, tdoc in tuned_docs.items():
        text += f"\n\nhvdfast tune on {link}: " + "; ".join(tdoc["why"])
    doc = {"hosts": args.hosts, "threads": bench.threads, "host_cpus": bench.cpus, "rows": rows, "alone": alone,
           "alone_by_link": alone_by_link, "floor": floor,
           "switch_filtering_off": bench.cluster.switch_filtering_off, "tuned": tuned_docs, "accuracy": acc}
    return text, doc


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    links = list(dict.fromkeys(r["link"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ys = [next((r["efficiency"] for r in rows if r["link"] == lk and r["variant"] == v), 0) for lk in links]
        ax.bar([k + i * width for k in range(len(links))], ys, width, label=v)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(links))], links)
    ax.axhline(1.0, color="grey", lw=0.8)
    label = "floor (no communication)"
    for k, lk in enumerate(links):  # the floor: the hosts' workers alone at once, as a share of that link's limit
        r = next((r for r in rows if r["link"] == lk and r.get("floor_img_s")), None)
        if r:
            ax.hlines(r["floor_img_s"] * r["efficiency"] / r["img_s"], k - width / 2, k + 0.8 - width / 2,
                      color="black", lw=1.2, linestyles="dashed", label=label)
            label = None
    ax.set(ylabel="efficiency vs compute limit", title="hvdfast bench cluster: 2 emulated hosts")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
