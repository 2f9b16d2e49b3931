"""`hvdfast bench cluster` end to end on 2 emulated hosts with a 1 Gbit/s link: the hvdfast variant (tuned on the
link, through horovodrun over ssh) and torchrun + DDP, a few steps of a small model each. Timing is the
benchmark's business; this checks that every variant ran across the hosts, that each one's ranks agree, that the
report has every column (the limit and the floor timed inside each run too), that the bytes each worker sent match
its wire format, that the tuning measured every
format under both controllers (and both of MPI's algorithms), that each host ran on cores of its own, and that
every lossy format an hvdfast row sent was trained on real digits beside uncompressed, its cost in the rows."""
import statistics
import json
import os
import subprocess

import pytest

from conftest import ROOT, hvdfast_cmd, launcher_env
from hvdfast.bench import hosts

COLUMNS = {"link", "variant", "settings", "img_s", "efficiency", "comm_share", "comm_wait_s", "wire_mb_per_step",
           "peak_rss_mb", "vs_best_ddp", "vs_ddp_default", "ranks_agree", "alone_img_s", "floor_img_s", "vs_floor",
           "efficiency_rounds", "top1_cost_pt", "efficiency_in_run", "vs_floor_in_run"}


def test_two_hosts_on_a_shaped_link(tmp_path, short_digits_dir):
    why = hosts.unavailable()
    if why:
        pytest.skip(f"emulated hosts unavailable: {why}")
    # hvdfast@...: the tuned hvdfast with a setting on top (an A/B row), here the wire format forced to fp16
    proc = subprocess.run(hvdfast_cmd("bench", "cluster", "--links", "1gbit", "--variants",
                                      "hvdfast,ddp,hvdfast@horovod.compression=fp16",
                                      "--model", "resnet18", "--image-size", "32", "--steps", "2", "--warmup", "1",
                                      "--tune-steps", "1", "--out-dir", str(tmp_path),
                                      "--accuracy-epochs", "0.5", f"data.dir={short_digits_dir}"),
                          env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("cluster-*.json")).read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    ab = rows.pop("hvdfast@horovod.compression=fp16")
    assert set(rows) == {"hvdfast", "ddp"}
    # the A/B row: its setting won over the tuned file's, and it is compared with hvdfast run in the same round
    assert ab["settings"] == "fp16" and ab["ranks_agree"] is True
    assert ab["controller"] == rows["hvdfast"]["controller"]
    assert ab["vs_hvdfast"] == ab["img_s"] / rows["hvdfast"]["img_s"]
    assert ab["vs_hvdfast_rounds"] == [ab["vs_hvdfast"]]
    assert "vs_hvdfast" not in rows["hvdfast"]
    assert "x hvdfast, each round" in next(tmp_path.glob("cluster-*.md")).read_text()
    assert "efficiency, limit in the run" in next(tmp_path.glob("cluster-*.md")).read_text()
    for r in rows.values():
        assert COLUMNS <= set(r), COLUMNS - set(r)
        assert r["link"] == "1gbit" and r["ranks_agree"] is True and r["img_s"] > 0
    assert rows["ddp"]["vs_ddp_default"] == 1.0
    # ResNet-18's gradient is 46.8 MB in fp32; in a 2-worker ring each worker sends about that much per step
    grad_mb = 11_689_512 * 4 / 1e6
    assert rows["ddp"]["wire_mb_per_step"] > 0.95 * grad_mb
    # tuned on the link: every wire format under each controller, and under MPI with Open MPI's choice of
    # allreduce algorithm and with recursive doubling (the workers say which controller ran them), and the
    # hvdfast variant ran with the controller and format chosen
    tuned = report["tuned"]["1gbit"]
    assert [(c["controller"], c["mpi_allreduce"], c["compression"]) for c in tuned["candidates"]] == [
        (ctl, algo, comp) for ctl, algo in (("mpi", "auto"), ("mpi", "recursive_doubling"), ("gloo", "auto"))
        for comp in ("none", "fp16", "powersgd")]
    # the candidates within 5% of the fastest at first were timed a second time (tune.RUNOFF), the others once
    # ranked by img/s against the floor timed beside each candidate's steps, in its launch
    assert all(c["vs_floor"] is not None and c["score"] == c["vs_floor"] for c in tuned["candidates"])
    first = [c["scores"][0] for c in tuned["candidates"]]
    close = [t * 1.05 >= max(first) for t in first]
    assert [len(c["timings"]) for c in tuned["candidates"]] == [2 if k and sum(close) > 1 else 1 for k in close]
    # one launch per transport, every format timed in turn inside it; the runoff one per transport it touches
    again = {(c["controller"], c["mpi_allreduce"]) for c in tuned["candidates"] if len(c["timings"]) == 2}
    assert tuned["launches"] == 3 + len(again)
    assert rows["hvdfast"]["controller"] == tuned["launcher"]["controller"]
    chosen = tuned["horovod"]["compression"]
    assert rows["hvdfast"]["settings"] == chosen
    share = {"none": (0.95, 1.5), "fp16": (0.45, 0.75), "powersgd": (0.0, 0.1)}
    assert share[chosen][0] * grad_mb < rows["hvdfast"]["wire_mb_per_step"] < share[chosen][1] * grad_mb
    # the formats were timed one after another in one launch per transport: each sent its own format's bytes
    for c in tuned["candidates"]:
        assert share[c["compression"]][0] * grad_mb < c["wire_mb"] < share[c["compression"]][1] * grad_mb, c
    # each host on cores of its own (rank i on host i), and the compute limit measured on the first host's cores
    k = (os.cpu_count() or 1) // 2
    if k >= 1:
        want = [str(i) if k == 1 else f"{i * k}-{i * k + k - 1}" for i in range(2)]
        assert list(report["host_cpus"].values()) == want
        for r in rows.values():
            assert r["cpus"] == want, (r["variant"], r["cpus"])
        assert {a["cpus"] for a in report["alone"]["hvdfast"]["runs"]} == {want[0]}
        # the limit measured beside the link's runs; the floor: one worker on each host at once, on its cores
        assert [a["cpus"] for a in report["alone_by_link"]["1gbit"]["hvdfast"]["runs"]] == [want[0]]
        assert [[f["cpus"] for f in run] for run in report["floor"]["1gbit"]["runs"]] == [want]
    limit = 2 * report["alone_by_link"]["1gbit"]["hvdfast"]["img_s"]
    floor = sum(f["img_s"] for f in report["floor"]["1gbit"]["runs"][0])
    for r in rows.values():
        assert r["efficiency"] == r["img_s"] / limit and r["vs_floor"] == r["img_s"] / floor
        assert r["efficiency_rounds"] == [r["efficiency"]]  # one round: its run against its own limit
        # the limit and the floor timed inside the run too, between its steps (one cycle per timed step): the
        # Horovod workers and the DDP peer alike
        assert r["efficiency_in_run"] == r["img_s"] / r["limit_in_run_img_s"], r["variant"]
        assert r["vs_floor_in_run"] == r["img_s"] / r["floor_in_run_img_s"], r["variant"]
        assert r["efficiency_in_run_rounds"] == [r["efficiency_in_run"]]
        assert len(r["efficiency_in_run_cycles"]) == 2
    # the Horovod workers split the run's steps and the floor's alike: the loss against the floor, per phase, adds
    # up to the step's (to rounding); DDP's step is not split
    for r in [rows["hvdfast"], ab]:
        run, fl = r["phases_in_run"]["run"], r["phases_in_run"]["floor"]
        assert r["lost_s"] == run["step_s"] - fl["step_s"]
        assert r["lost_s"] == pytest.approx(r["lost_compute_s"] + r["lost_wait_s"] + r["lost_update_s"], rel=1e-9)
        assert r["fwd_bwd_vs_floor"] == run["compute_s"] / fl["compute_s"]
    assert "lost_s" not in rows["ddp"]
    assert "Where each step lost time against the floor" in next(tmp_path.glob("cluster-*.md")).read_text()
    # the accuracy cost: every lossy format of the hvdfast rows (the A/B's fp16, and the tuned choice if lossy)
    # trained on the digits with that format, beside uncompressed, seed 0; each row's cost is its final top-1 minus
    # uncompressed's
    acc = report["accuracy"]
    lossy = {r["settings"] for r in [*rows.values(), ab] if r["variant"].startswith("hvdfast")} - {"none"}
    assert set(acc["runs"]) == lossy | {"none"}
    for fmt, runs in acc["runs"].items():
        assert [(r["seed"], r["compression"]) for r in runs] == [(0, fmt)]
    ref = statistics.mean(r["final_top1"] for r in acc["runs"]["none"])
    for r in [*rows.values(), ab]:
        want = (acc["runs"][r["settings"]][0]["final_top1"] - ref
                if r["variant"].startswith("hvdfast") and r["settings"] != "none" else None)
        assert r["top1_cost_pt"] == want, (r["variant"], r["top1_cost_pt"], want)
    assert "Accuracy of the wire formats" in next(tmp_path.glob("cluster-*.md")).read_text()
    assert report["switch_filtering_off"] is True  # the bridge (the switch) runs no iptables on the hosts' cores
    assert list(tmp_path.glob("cluster-*.png")) and list(tmp_path.glob("cluster-*.md"))
    assert not [line for line in os.popen("ip netns list").read().splitlines() if "hvdfast" in line]


def test_settings_are_refused_before_any_host_is_built():
    # a mistyped key, settings on a baseline, an unknown link, data the accuracy runs lack: one line each,
    # before namespaces or root matter
    for args, says in [(["--variants", "hvdfast,hvdfast@horovod.cycl_time_ms=2"],
                        "unknown config key 'horovod.cycl_time_ms'"),
                       (["--variants", "ddp@horovod.cycle_time_ms=2"], "only the hvdfast variant takes settings"),
                       (["--variants", "hvdfast@"], "only the hvdfast variant takes settings"),
                       (["--links", "2gbit"], "unknown link '2gbit'"),
                       # the accuracy runs' data, before the timed runs rather than after them
                       (["data.dir=/no/such/imagenet"], "no train/ folder")]:
        proc = subprocess.run(hvdfast_cmd("bench", "cluster", *args), env=launcher_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_terminated_benchmark_takes_its_hosts_down(tmp_path):
    """SIGTERM (a job's time limit, `timeout`) mid-run: one line, exit 143, and the emulated hosts gone — their
    namespaces, bridge and every process in them (the ssh sessions and workers of the run it cut short
    included, which sshd's process group does not hold)."""
    import signal
    import time
    why = hosts.unavailable()
    if why:
        pytest.skip(f"emulated hosts unavailable: {why}")
    proc = subprocess.Popen(hvdfast_cmd("bench", "cluster", "--links", "unlimited", "--variants", "ddp",
                                        "--model", "resnet18", "--image-size", "32", "--steps", "1000",
                                        "--accuracy-seeds", "0", "--no-floor", "--out-dir", str(tmp_path)),
                            env=launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tag = f"hvdfast{proc.pid % 100000}-"  # hosts.Cluster names its namespaces after the benchmark's pid
    seen: set[int] = set()
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            names = [line.split()[0] for line in os.popen("ip netns list").read().splitlines() if tag in line]
            workers = set()
            for ns in names:
                for pid in os.popen(f"ip netns pids {ns}").read().split():
                    seen.add(int(pid))
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read() if os.path.exists(f"/proc/{pid}") else b""
                    if b"hvdfast.bench." in cmdline:
                        workers.add(int(pid))
            if workers:  # a run is under way (the first: the worker alone, under horovodrun over ssh)
                break
            time.sleep(0.5)
        assert proc.poll() is None and workers, "no run started"
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == ("hvdfast bench cluster: stopped by SIGTERM; taking the emulated hosts "
                                            "down")
    assert not [line for line in os.popen("ip netns list").read().splitlines() if tag in line]
    assert f"hvdbr{proc.pid % 100000}" not in os.popen("ip -o link").read()

    def running(pid: int) -> bool:  # a zombie has ended; its parent (init, once ours exited) reaps it in a moment
        try:
            return "\tZ" not in next(ln for ln in open(f"/proc/{pid}/status") if ln.startswith("State:"))
        except OSError:
            return False
    alive = [pid for pid in seen if running(pid)]
    assert not alive, [open(f"/proc/{p}/cmdline", "rb").read() for p in alive]
