"""Benchmarks are not tests: these check the benchmarks' arithmetic and that they run, never their timings."""
import json
import subprocess

import pytest

from hvdfast import engine
from hvdfast.bench import model
from hvdfast.bench.report import markdown_table

from conftest import ROOT, hvdfast_cmd, launcher_env


def test_ring_model_arithmetic():
    s = model.Setup(compute_s=1.0, grad_bytes=100e6, workers=4, gpus_per_node=1, net="25gbe", eta=1.0,
                    fusion_bytes=200e6)
    bw, lat = model.LINKS["25gbe"]
    assert model.comm_time(s, "ring") == pytest.approx(2 * 3 / 4 * 100e6 / (bw * 1e9) + 2 * 3 * lat)
    # fully hidden behind the backward pass -> efficiency 1; a slow link exposes the rest
    assert model.efficiency(s, "ring")[1] == pytest.approx(1.0)
    slow = model._with(s, eta=0.01)
    step, eff = model.efficiency(slow, "ring")
    assert step == pytest.approx(1.0 + model.comm_time(slow, "ring") - 2 / 3) and eff < 1


def test_calibration_reproduces_the_reference_it_was_fitted_to():
    rows = model.calibrate()
    assert rows[0]["model"] == pytest.approx(rows[0]["published"], abs=1e-3)
    assert 0 < rows[0]["eta"] <= 1


def test_markdown_table():
    t = markdown_table([{"a": 1.23456, "b": "x"}], [("a", "A"), ("b", "B")])
    assert t.splitlines() == ["| A | B |", "| --- | --- |", "| 1.23 | x |"]


def test_bench_allreduce_runs_under_the_launcher(tmp_path):
    p = subprocess.run(hvdfast_cmd("bench", "allreduce", "--controllers", "gloo", "--fusion-mb", "0",
                                   "--cycle-ms", "1", "--model", "resnet18", "--compressions", "none,fp16",
                                   "--malloc", "default,hugepages",
                                   "--repeat", "1", "--warmup", "0", "--out-dir", str(tmp_path)),
                       capture_output=True, text=True, timeout=300, env=launcher_env(), cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads(next(tmp_path.glob("allreduce-*.json")).read_text())
    rows = result["rows"]
    assert {(r["malloc"], r["op"], r["compression"]) for r in rows} == {
        (m, o, c) for m in ("default", "hugepages") for o in ("average", "sum") for c in ("none", "fp16")}
    # each malloc mode reached the ranks (glibc reads it at process start)
    assert {c["malloc"]: c["glibc_tunables"] for c in result["cells"]} == {
        "default": "", "hugepages": "glibc.malloc.hugetlb=1"}
    assert result["cells"][0]["tensors"] == 62            # resnet18's parameter tensors
    # No allreduce of N bytes between processes beats one memcpy of N bytes.
    assert all(r["x_memcpy"] > 1 for r in rows)
    assert "| controller |" in p.stdout


def test_bench_train_runs_hvdfast_beside_torchrun_ddp(tmp_path):
    # `--baseline ddp`: the torchrun + DDP peer on this host, beside hvdfast under horovodrun, in one command; the
    # peer trains in the recipe's precision, here the one that train.precision=auto does not give on this CPU
    # (before, it trained in auto's whatever the recipe said: bf16 beside an fp16 hvdfast on this CPU)
    auto = engine.auto_precision("cpu", engine.cpu_bf16_native())
    other = "fp32" if auto == "bf16" else "bf16"
    p = subprocess.run(hvdfast_cmd("bench", "train", "--baseline", "ddp", "--np", "2", "--model", "resnet18",
                                   "--image-size", "32", "--steps", "2", "--warmup", "1", "--controller", "gloo",
                                   "--out-dir", str(tmp_path), f"train.precision={other}"),
                       capture_output=True, text=True, timeout=600, env=launcher_env(), cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads(next(tmp_path.glob("train-*.json")).read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"ddp", "hvdfast"}
    assert rows["ddp"]["compression"] == "hook none" and rows["ddp"]["precision"] == other
    assert rows["hvdfast"]["precision"] == other
    assert all(r["workers"] == 2 and r["img_s_total"] > 0 and r["peak_rss_mb"] > 0 for r in rows.values())
    assert any(line.startswith("hvdfast / ddp at 2 worker(s): ") for line in result["ratios"])


@pytest.mark.parametrize("variant", ["hvdfast", "ddp"])
def test_bench_workers_out_of_memory_are_one_line(tmp_path, variant):
    """A benchmark asked for more than the memory holds (each worker's address space capped at 10 GiB by
    `prlimit --as`, 1,024 images of 224 px per worker): the driver's failure was the last 3,000 characters of the
    launcher's output, every rank's traceback; now it is the workers' one line, once, naming the bench's flags."""
    extra = ["--baseline", "ddp"] if variant == "ddp" else []  # (the DDP peer runs first)
    p = subprocess.run(["prlimit", f"--as={10 << 30}", *hvdfast_cmd(
        "bench", "train", *extra, "--np", "2", "--batch", "1024", "--image-size", "224", "--steps", "2", "--warmup",
        "1", "--controller", "gloo", "--out-dir", str(tmp_path))], capture_output=True, text=True, timeout=600,
        env=launcher_env(), cwd=ROOT)
    last = p.stderr.strip().splitlines()[-1]
    asked = last.split("asked for ")[-1].split(" GiB")[0]
    assert p.returncode != 0 and last == (
        f"hvdfast bench: the {variant} run at 2 worker(s) failed: out of CPU memory (asked for {asked} GiB) at --batch "
        f"1024 per worker, --image-size 224, --model resnet50: lower --batch or --image-size; this host's 2 workers "
        f"share its memory."), p.stdout[-2000:] + p.stderr[-3000:]


def plant_a_bench_bug(tmp_path):
    """A folder for the workers' PYTHONPATH whose sitecustomize replaces bench.worker.peak_rss_mb (called by
    hvdfast's workers and the DDP peer after their timed steps) with one that looks up a missing key (line 6):
    real code raising, on every rank."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import sys\nimport hvdfast.bench.worker\n\n\ndef peak_rss_mb():\n    return {}['rss']\n\n\n"
        "sys.modules['hvdfast.bench.worker'].peak_rss_mb = peak_rss_mb\n")
    return inject


@pytest.mark.parametrize("variant", ["hvdfast", "ddp"])
def test_a_bug_in_the_bench_workers_is_said_once_with_one_traceback(tmp_path, variant):
    """A bug every rank of a benchmark meets (ours or a library's): the driver showed the last 3,000 characters of
    the launcher's output, both ranks' tracebacks cut into each other piece by piece. Now it is one message: which
    ranks met what, and the lowest rank's traceback once (the workers save theirs; bench.worker.guarded). Under
    torchrun (the DDP peer, RANK) as under horovodrun."""
    extra = ["--baseline", "ddp"] if variant == "ddp" else []  # (the DDP peer runs first)
    inject = plant_a_bench_bug(tmp_path)
    p = subprocess.run(hvdfast_cmd("bench", "train", *extra, "--np", "2", "--model", "resnet18", "--batch", "4",
                                   "--image-size", "32", "--steps", "2", "--warmup", "1", "--out-dir", str(tmp_path)),
                       capture_output=True, text=True, timeout=600, env={**launcher_env(), "PYTHONPATH":
                                                                            f"{inject}:{ROOT}"}, cwd=ROOT)
    lines = p.stderr.strip().splitlines()
    first = lines.index(f"hvdfast bench: the {variant} run at 2 worker(s) failed on a bug in hvdfast or in a library "
                        f"under it, not a problem with the benchmark's options: ranks 0-1 met KeyError: 'rss'; rank "
                        f"0's traceback:")
    assert p.returncode == 1 and lines[first + 1] == "Traceback (most recent call last):", p.stderr[-3000:]
    assert lines[-2:] == ["KeyError: 'rss'", "Please report it with the traceback, the benchmark's command line and "
                                             "`hvdfast doctor`'s output."], p.stderr[-3000:]
    assert f'  File "{inject}/sitecustomize.py", line 6, in peak_rss_mb' in lines
    assert p.stderr.count("Traceback") == 1 and "<stderr>" not in p.stderr, p.stderr[-3000:]


def test_the_bench_reads_each_distinct_bug_once_with_its_ranks(tmp_path):
    """bench.worker.bugs_said over the files the ranks saved: each distinct error once, with the ranks that met it
    (as ranges: at 1,024 ranks one line) and the lowest one's traceback; nothing saved, nothing said."""
    from hvdfast.bench import worker
    out = tmp_path / "hvdfast-8.json"
    assert worker.bugs_said(out) is None
    errors = worker.bug_folder(out) / "errors"
    errors.mkdir(parents=True)
    for r in (7, 2, 3, 4, 6):
        what = "ValueError: odd" if r == 7 else "KeyError: 'rss'"
        (errors / f"rank{r}.txt").write_text(f"rank {r}, pid 1, now\nTraceback (most recent call last):\n"
                                             f"  File \"x.py\", line {r}, in f\n{what}\n")
    assert worker.bugs_said(out).splitlines() == [
        "a bug in hvdfast or in a library under it, not a problem with the benchmark's options: ranks 2-4, 6 met "
        "KeyError: 'rss'; rank 2's traceback:",
        "Traceback (most recent call last):", '  File "x.py", line 2, in f', "KeyError: 'rss'",
        "rank 7 met ValueError: odd; rank 7's traceback:",
        "Traceback (most recent call last):", '  File "x.py", line 7, in f', "ValueError: odd",
        "Please report it with the traceback, the benchmark's command line and `hvdfast doctor`'s output."]


def test_cluster_model_recovers_what_made_the_points():
    """Points made by the model itself (known CPU share per wire format, eta per family; 2 hosts on 2 cores and 4
    hosts sharing them) must be fitted back exactly, every prediction then equal to its point; the roles say which
    points fit what; and a fit carried to other reports predicts all of their points, at any speed of the machine."""
    from hvdfast.bench import model_cluster as mc
    truth_cpu = {("hvdfast", "none"): 0.09, ("hvdfast", "powersgd"): 0.07, ("ddp", "bf16"): 0.11}
    truth_eta = {"hvdfast": 0.55, "ddp": 0.96}
    mb = {"none": 102.5, "powersgd": 1.55, "bf16": 51.3}

    def made(compute_s: float, share: float, scale_mb: float = 1.0) -> list:
        pts = []
        for (family, fmt), cpu in truth_cpu.items():
            for link in ("unlimited", "10gbit", "1gbit", "100mbit"):
                p = mc.Point("synthetic", link, family, fmt, 0.0, mb[fmt] * scale_mb, compute_s, share)
                pts.append(mc.Point(p.source, link, family, fmt, mc.step_time(p, cpu, truth_eta[family]), p.wire_mb,
                                    p.compute_s, share))
        return pts

    pts = made(0.654, 1.0)
    cpu, eta = mc.fit(pts)
    assert cpu == pytest.approx(truth_cpu) and eta == pytest.approx(truth_eta)
    rows = mc.check(pts, cpu, eta)
    assert max(abs(r["error"]) for r in rows) < 1e-9
    roles = {(r["link"], r["family"], r["format"]): r["role"] for r in rows}
    assert roles[("unlimited", "ddp", "bf16")] == "fits c" and roles[("100mbit", "ddp", "bf16")] == "fits eta"
    assert roles[("10gbit", "ddp", "bf16")] == "fits c"  # both fast links' points (median)
    assert roles[("100mbit", "hvdfast", "powersgd")] == "predicted"  # 1.55 MB: too little traffic to fit eta on
    assert roles[("1gbit", "hvdfast", "none")] == "predicted"
    # another day 1.6x slower, 4 hosts on the 2 cores (s = 2) sending the ring's 1.5x bytes: all predicted, exactly
    other = made(0.654 * 1.6, 2.0, 1.5)
    rows = mc.check(other, cpu, eta, fitted_here=False)
    assert len(rows) == len(other) and {r["role"] for r in rows} == {"predicted"}
    assert max(abs(r["error"]) for r in rows) < 1e-9


def test_cluster_model_reads_c_as_the_median_of_the_fast_links_points():
    from hvdfast.bench import model_cluster as mc
    pts = [mc.Point("r", link, "hvdfast", "fp16", step, 51.3, 0.7)
           for link, step in (("unlimited", 0.77), ("unlimited", 0.84), ("10gbit", 0.80), ("1gbit", 2.0))]
    cpu, _ = mc.fit(pts)
    assert cpu[("hvdfast", "fp16")] == pytest.approx(0.80 / 0.7 - 1)  # the median of the three, not the 1gbit one
    # without fast-link points: the fastest link it ran on
    cpu, _ = mc.fit([mc.Point("r", "1gbit", "ddp", "bf16", 0.9, 51.3, 0.7),
                     mc.Point("r", "100mbit", "ddp", "bf16", 5.0, 51.3, 0.7)])
    assert cpu[("ddp", "bf16")] == pytest.approx(0.9 / 0.7 - 1)


def test_cluster_points_take_each_links_own_compute_limit():
    """`bench model` reads T_c per link from a report that measured the limit beside each link (alone_by_link),
    and the one overall limit from reports before that."""
    from hvdfast.bench import model_cluster as mc
    rows = [{"link": lk, "variant": "hvdfast", "settings": "fp16", "controller": "mpi", "step_s": 0.8,
             "img_s": 20.0, "wire_mb_per_step": 51.3} for lk in ("1gbit", "unlimited")]
    report = {"hardware": {"cores": 2}, "hosts": 2, "threads": 1, "rows": rows,
              "alone": {"hvdfast": {"step_s": 0.70}},
              "alone_by_link": {"1gbit": {"hvdfast": {"step_s": 0.68}}, "unlimited": {"hvdfast": {"step_s": 0.72}}},
              "tuned": {"1gbit": {"candidates": [{"controller": "gloo", "compression": "none", "img_s": 16.0,
                                                  "wire_mb": 102.5}]}}}
    got = {(p.source, p.link): p.compute_s for p in mc.points(report, "r")}
    assert got == {("r", "1gbit"): 0.68, ("r", "unlimited"): 0.72, ("r tune", "1gbit"): 0.68}
    del report["alone_by_link"]
    assert {p.compute_s for p in mc.points(report, "r")} == {0.70}


def test_cluster_points_keep_a_forced_open_mpi_algorithm_apart_from_open_mpis_choice():
    """The model fits eta per transport: MPI with Open MPI's choice, MPI with an algorithm forced
    (horovod.mpi_allreduce), and Gloo reach different shares of the line rate, so none is fitted on another's
    points (rows and tune candidates alike; rows from before the field was recorded are Open MPI's choice)."""
    from hvdfast.bench import model_cluster as mc
    rows = [{"link": "1gbit", "variant": v, "settings": "fp16", "controller": "mpi", "mpi_allreduce": algo,
             "step_s": 0.8, "img_s": 20.0, "wire_mb_per_step": 51.3}
            for v, algo in (("hvdfast", "recursive_doubling"), ("hvdfast@horovod.mpi_allreduce=auto", "auto"),
                            ("hvdfast@horovod.cycle_time_ms=2", None))]
    report = {"hardware": {"cores": 2}, "hosts": 2, "threads": 1, "rows": rows, "alone": {"hvdfast": {"step_s": 0.7}},
              "tuned": {"1gbit": {"candidates": [
                  {"controller": c, "mpi_allreduce": a, "compression": "none", "img_s": 16.0, "wire_mb": 102.5}
                  for c, a in (("mpi", "auto"), ("mpi", "recursive_doubling"), ("gloo", "auto"))]}}}
    assert [(p.source, p.family) for p in mc.points(report, "r")] == [
        ("r", "hvdfast-recursive_doubling"), ("r", "hvdfast"), ("r", "hvdfast"),
        ("r tune", "hvdfast"), ("r tune", "hvdfast-recursive_doubling"), ("r tune", "hvdfast-gloo")]


def test_cluster_points_take_s_from_the_floor_measured_beside_the_link():
    """s (what computing together costs each worker) is measured where the report has the floor for that link: hosts
    x one worker alone / all hosts' workers at once; elsewhere it is assumed: hosts x threads / cores, at least 1."""
    from hvdfast.bench import model_cluster as mc
    rows = [{"link": lk, "variant": "hvdfast", "settings": "powersgd", "controller": "mpi", "step_s": 1.6,
             "img_s": 20.0, "wire_mb_per_step": 2.3} for lk in ("100mbit", "1gbit")]
    report = {"hardware": {"cores": 2}, "hosts": 4, "threads": 1, "rows": rows, "alone": {"hvdfast": {"step_s": 0.7}},
              "alone_by_link": {lk: {"hvdfast": {"step_s": 0.7, "img_s": 11.4}} for lk in ("100mbit", "1gbit")},
              "floor": {"1gbit": {"img_s": 20.0}}}
    got = {p.link: p.share for p in mc.points(report, "r")}
    assert got == {"1gbit": pytest.approx(4 * 11.4 / 20.0), "100mbit": 2.0}


def test_cluster_rounds_alternate_the_variants_order():
    from hvdfast.bench.cluster import round_order
    v = ["hvdfast", "ddp-bf16", "ddp-powersgd"]
    assert [round_order(v, rep) for rep in range(3)] == [v, v[::-1], v]
    assert v == ["hvdfast", "ddp-bf16", "ddp-powersgd"]  # the caller's list is left as it was
