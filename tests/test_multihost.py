"""Multi-host launch through the real ssh path: hosts are network namespaces on this machine
(hvdfast/bench/hosts.py), each with its own address, hostname and sshd. From a login host, `hvdfast launch` runs
the ssh preflight and then horovodrun (Gloo) or mpirun across hosta and hostb; both must finish the digits recipe
with identical parameters, and `hvdfast tune --hosts` measures its candidates across the two.

The preflight's failure cases use the same cluster: an address with no sshd, a name that does not resolve, a
cloned node reporting hosta's hostname, and a node whose Python sees another Horovod release.
"""
import json
import os
from pathlib import Path

import pytest
import yaml

from hvdfast import tuned
from hvdfast.bench import hosts as cluster
from conftest import ROOT, SHORT_TRAIN_PER_CLASS
from hvdfast.launch import commands

SKEW_VERSION = "0.27.0"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    why = cluster.unavailable()
    if why:
        pytest.skip(f"multi-host tests skipped: {why}")
    work = tmp_path_factory.mktemp("cluster")
    # A node with another Horovod release, without building a second Horovod: a `horovod` package first on its
    # PYTHONPATH reports 0.27.0 and defers every submodule (horovod.torch, the compiled library) to the real one.
    import horovod
    skew = work / "skew" / "horovod"
    skew.mkdir(parents=True)
    (skew / "__init__.py").write_text(f"__version__ = {SKEW_VERSION!r}\n"
                                      f"__path__.append({str(Path(horovod.__file__).parent)!r})\n")
    c = cluster.Cluster(work, [
        ("login", "login", []),
        ("hosta", "hosta", []),
        ("hostb", "hostb", []),
        ("hostc", "hosta", []),                                        # a cloned node: hosta's hostname
        ("hostd", "hostd", [f"SetEnv PYTHONPATH={work / 'skew'}"]),    # version skew
    ], down=["hostdown"])
    try:
        c.start()
    except RuntimeError as exc:
        c.stop()
        pytest.skip(f"multi-host tests skipped: the cluster could not start ({exc})")
    yield c
    c.stop()


def env() -> dict:
    # what the login host's launcher gets: the builder's environment over a clean one
    return commands.process_env({"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
                                HVDFAST_TUNED=os.environ["HVDFAST_TUNED"])


def on_login(hosts, command: str, timeout: float = 600):
    return hosts.ssh("login", command, env(), ROOT, timeout=timeout)


def test_preflight_passes_on_a_healthy_cluster(hosts, digits_dir):
    p = on_login(hosts, f"hvdfast doctor --hosts hosta:1,hostb:1 --nic hvd0 --data {digits_dir} --json")
    out = json.loads(p.stdout)
    assert p.returncode == 0, out["problems"]
    assert [out["hosts"][h]["hostname"] for h in ("hosta", "hostb")] == ["hosta", "hostb"]
    assert out["hosts"]["hostb"]["horovod"].startswith("0.28.1")


def test_preflight_names_unreachable_hosts(hosts):
    p = on_login(hosts, "hvdfast doctor --hosts hosta,hostdown,nosuchhost")
    assert p.returncode == 1
    problems = p.stdout.split("PROBLEMS:")[1].strip().splitlines()
    assert len(problems) == 2, p.stdout
    assert "hostdown: not reachable over ssh" in problems[0] and "sshd listens" in problems[0]
    assert "nosuchhost: not reachable over ssh" in problems[1] and "/etc/hosts" in problems[1]


def test_preflight_names_duplicate_hostnames(hosts):
    p = on_login(hosts, "hvdfast doctor --hosts hosta,hostb,hostc")
    assert p.returncode == 1
    assert "hosta and hostc report the same hostname 'hosta'" in p.stdout
    assert "hostb" not in p.stdout.split("PROBLEMS:")[1]


def test_preflight_names_a_horovod_version_mismatch(hosts):
    p = on_login(hosts, "hvdfast doctor --hosts hosta,hostd")
    assert p.returncode == 1
    problems = p.stdout.split("PROBLEMS:")[1].strip().splitlines()
    assert len(problems) == 1, p.stdout
    assert f"hostd: horovod {SKEW_VERSION} (" in problems[0] and "this host (login) has 0.28.1 (" in problems[0]


def test_preflight_names_a_missing_interface_and_data_folder(hosts, tmp_path):
    p = on_login(hosts, f"hvdfast doctor --hosts hosta,hostb --nic ib0 --data {tmp_path / 'nowhere'}")
    assert p.returncode == 1
    problems = p.stdout.split("PROBLEMS:")[1].strip().splitlines()
    assert len(problems) == 4, p.stdout
    for host in ("hosta", "hostb"):
        assert any(f"{host}: no network interface 'ib0' (it has lo, hvd0)" in line for line in problems)
        assert any(f"{host}: data folder {tmp_path / 'nowhere'} is missing" in line for line in problems)


def test_launch_stops_at_a_failed_preflight(hosts, digits_dir):
    p = on_login(hosts, f"hvdfast launch hosts --config launch/configs/digits-cpu.yaml --np 2 --hosts hosta:1,hostc:1 "
                        f"data.dir={digits_dir}", timeout=120)
    assert p.returncode == 2
    assert "report the same hostname" in p.stderr and "preflight failed" in p.stderr
    assert "horovodrun" not in p.stdout


@pytest.mark.parametrize("target", ["hosts", "mpirun"])
def test_digits_across_two_hosts(hosts, short_digits_dir, tmp_path, target):
    run = tmp_path / "run"
    controller = "--controller gloo" if target == "hosts" else ""
    p = on_login(hosts, f"hvdfast launch {target} --config launch/configs/digits-cpu.yaml --np 2 "
                        f"--hosts hosta:1,hostb:1 --nic hvd0 {controller} data.dir={short_digits_dir} train.epochs=1 "
                        f"train.threads=1 train.run_dir={run} train.progress=lines train.resume=never")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "preflight: 2 host(s) OK (hosta, hostb)" in p.stdout
    summary = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["kind"] == "summary" and summary["workers"] == 2 and summary["steps"] == 10 * SHORT_TRAIN_PER_CLASS // 64
    assert [r["host"] for r in summary["ranks"]] == ["hosta", "hostb"]
    assert summary["ranks_agree"]
    assert summary["ranks"][0]["params_sha256"] == summary["ranks"][1]["params_sha256"]


def test_tune_across_hosts_writes_the_wire_format_that_launch_applies(hosts, tmp_path):
    # hvdfast tune --hosts: a few training steps on hosta and hostb per wire format, from the login host
    out = tmp_path / "tuned.yaml"
    p = on_login(hosts, f"hvdfast tune --hosts hosta:1,hostb:1 --nic hvd0 --controllers gloo --model resnet18 "
                        f"--image-size 32 --steps 1 --out {out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc = yaml.safe_load(out.read_text())
    assert [c["compression"] for c in doc["candidates"]] == ["none", "fp16", "powersgd"]
    assert all(c["img_s"] > 0 and c["controller"] == "gloo" for c in doc["candidates"])
    # each candidate really ran across the link with its own wire format: fp16 sends about half of none
    sent = {c["compression"]: c["wire_mb"] for c in doc["candidates"]}
    assert 0.4 < sent["fp16"] / sent["none"] < 0.6 and sent["powersgd"] < 0.1 * sent["none"]
    assert doc["horovod"]["compression"] in sent and doc["launcher"]["controller"] == "gloo"
    # ranked by img/s against the floor (both hosts' workers alone at once) timed beside each candidate's steps
    assert doc["why"][0].startswith("fastest across the hosts (img/s against the floor timed beside each): "
                                    "compression ")
    assert all(0 < c["vs_floor"] == c["score"] for c in doc["candidates"])
    # hvdfast train reads it like any tuned file (recipe < tuned file < overrides)
    cfg, _ = tuned.load_config(ROOT / "launch/configs/digits-cpu.yaml", [f"horovod.tuned={out}"])
    assert cfg.horovod.compression == doc["horovod"]["compression"] and cfg.horovod.bucket_mb == 25.0


def test_dali_shards_by_global_rank_with_two_slots_per_host(hosts, tmp_path):
    """4 ranks on 2 hosts (local ranks 0, 1 on each): DALI must shard by global rank. Sharded by local rank (as
    DALI's own ResNet-50 example does), hosta's and hostb's local rank 0 would read the same images."""
    import shlex
    import sys
    from conftest import make_jpeg_tree
    tree = make_jpeg_tree(tmp_path / "tree", classes=32, per_class={"train": 1, "val": 1})
    out = tmp_path / "out"
    out.mkdir()
    cmd = commands.horovodrun(4, [sys.executable, str(ROOT / "tests/parallel/shards.py"), str(out), str(tree),
                                  "dali", "4"], hosts="hosta:2,hostb:2", nic="hvd0", controller="gloo")
    p = on_login(hosts, shlex.join(cmd), timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]
    seen = [sorted(i for b in r["train"] for i in b) for r in ranks]
    assert all(len(s) == 8 for s in seen)                              # 32 images / 4 ranks / batch 4: 2 steps
    assert sorted(i for s in seen for i in s) == list(range(32))       # disjoint, and together every image


def test_a_link_cut_mid_training_ends_the_job_with_the_watchdogs_diagnosis(hosts, digits_dir, tmp_path):
    """hostb's link goes down mid-step under `hvdfast launch mpirun` (a cable, a switch port): both ranks wait in
    the gradient allreduce for each other; the watchdog (train.hang_timeout_s) dumps their stacks and rank 0 says
    that no rank is behind; then mpirun, which aborted the job, waited forever for its daemon on hostb over an ssh
    connection a dead link never closes (17 minutes and still waiting, when first seen). `hvdfast launch` now ends
    it ABORT_GRACE_S after its abort and says so: the job ends, exit code 1."""
    import subprocess
    import time
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    job = hosts.ssh_start("login", f"hvdfast launch mpirun --config launch/configs/digits-cpu.yaml --np 2 --hosts "
                                   f"hosta:1,hostb:1 --nic hvd0 data.dir={digits_dir} model.name=resnet18 "
                                   f"train.epochs=20 train.threads=1 train.run_dir={run} train.progress=lines "
                                   f"train.resume=never train.log_every=5 train.hang_timeout_s=15", env(), ROOT, log)
    veth = hosts.veths[[name for name, _, _ in hosts.hosts].index("hostb")]
    try:
        deadline = time.monotonic() + 300
        while '"kind": "train"' not in ((run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists()
                                        else ""):
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
        job.wait(timeout=300)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        if job.poll() is None:
            job.kill()
    out = log.read_text()
    said = [line for line in out.splitlines() if line.startswith(("hvdfast: error:", "hvdfast launch:"))]
    assert job.returncode == 1 and len(said) == 2, out[-3000:]
    assert said[0].startswith("hvdfast: error: no training progress for "), out[-3000:]
    assert said[0].endswith(f"Every rank's stacks are in {run}/hang/; fix the cause and run the same command again: "
                            f"it starts over (train.resume=never; with train.resume=auto it would continue from the "
                            f"newest checkpoint, once one is written)."), out[-3000:]
    assert said[1] == ("hvdfast launch: mpirun had not ended 30 s after it aborted the job: it was waiting on a host "
                       "it cannot reach (a link or host that failed). Ended it and what it started on this host; the "
                       "workers' own messages are above."), out[-3000:]
    print(said[0])
