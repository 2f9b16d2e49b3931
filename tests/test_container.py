"""Containers for real (podman with runc; a local Debian 12 base made with debootstrap where no registry is
reachable): docker/build.sh builds the CPU image through launch/install.sh, and in it the doctor says the stack is
complete, launch/demo.sh trains the digits with 2 MPI workers to its accuracy into a host folder, and two
containers on one podman network, each with sshd on its own port, run one 2-host horovodrun job through
`hvdfast launch hosts` with its preflight, the ranks ending with identical parameters.

The image, its base and the build caches stay in the machine's container storage between runs; the first build
takes minutes (Horovod compiles), later ones seconds (nothing changed) or a few minutes (a source change)."""
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import ROOT, skip_unless_root_with

IMAGE = "localhost/hvdfast:cpu"
NET = "hvdfast-test"
SUBNET = "10.89.77"
NODES = {"nodea": f"{SUBNET}.11", "nodeb": f"{SUBNET}.12"}


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """Environment for podman (runc, no default ulimits) with the image built (or found up to date)."""
    skip_unless_root_with(("podman", "runc", "debootstrap"),
                          "podman here runs as root (rootless podman needs subuids this machine lacks)",
                          "podman, runc and debootstrap")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(ROOT / "docker/build.sh"), "cpu"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=2400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    print(f"image build: {time.monotonic() - t0:.0f} s")
    return env


def podman_cmd(env, *args, timeout=900, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"podman {' '.join(args)}:\n" + p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_doctor_in_the_image_says_the_stack_is_complete(podman):
    out = podman_cmd(podman, "run", "--rm", IMAGE, "hvdfast", "doctor").stdout
    assert "OK: the stack is complete." in out, out
    assert "0.28.1" in out


def test_demo_trains_with_two_mpi_workers_into_a_host_folder(podman, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    p = podman_cmd(podman, "run", "--rm", "--shm-size=1g", "-e", "OMPI_MCA_btl_vader_single_copy_mechanism=none",
                   "-v", f"{runs}:/opt/hvdfast/runs", IMAGE, "bash", "launch/demo.sh", timeout=1200)
    out = p.stdout
    assert ", mpi, " in out and "2 worker(s) x" in out, out[-3000:]
    summary = next(line for line in out.splitlines() if "SUMMARY" in line)
    assert "over 2 worker(s)" in summary and "time to 97% top-1: not reached" not in summary, summary
    # what the container wrote outlives it, in the host folder
    run = runs / "digits-cpu"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in rows if r["kind"] == "summary")
    assert final["workers"] == 2 and final["ranks_agree"] and final["best_top1"] >= 97.0, final
    assert (run / "config.yaml").is_file() and (run / "curves.png").is_file()
    assert list((run / "checkpoints").glob("*.pt"))


@pytest.fixture
def two_nodes(podman, tmp_path, digits_dir):
    """Two containers on one podman network (fixed addresses, names in /etc/hosts), sshd on port 12345 in each,
    a shared key, the digits and a run folder mounted in both (as a cluster's shared file system)."""
    ssh = tmp_path / "ssh"
    ssh.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519")], check=True)
    shutil.copy(ssh / "id_ed25519.pub", ssh / "authorized_keys")
    (ssh / "config").write_text("Host node*\n    Port 12345\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    podman_cmd(podman, "network", "rm", "-f", NET, check=False)
    for name in NODES:
        podman_cmd(podman, "rm", "-f", f"hvdfast-{name}", check=False)
    podman_cmd(podman, "network", "create", "--subnet", f"{SUBNET}.0/24", NET)
    hosts = [f"--add-host={n}:{ip}" for n, ip in NODES.items()]
    try:
        for name, ip in NODES.items():
            podman_cmd(podman, "run", "-d", "--name", f"hvdfast-{name}", "--hostname", name, "--network", NET,
                       "--ip", ip, *hosts, "--shm-size=1g", "-v", f"{ssh}:/root/.ssh:ro",
                       "-v", f"{digits_dir}:/data/digits:ro", "-v", f"{runs}:/runs", IMAGE,
                       "/usr/sbin/sshd", "-D", "-p", "12345")
        yield runs
    finally:
        for name in NODES:
            podman_cmd(podman, "rm", "-f", f"hvdfast-{name}", check=False)
        podman_cmd(podman, "network", "rm", "-f", NET, check=False)


def test_two_containers_as_two_hosts(podman, two_nodes):
    p = podman_cmd(podman, "exec", "hvdfast-nodea", "hvdfast", "launch", "hosts", "--hosts", "nodea:1,nodeb:1",
                   "--nic", "eth0", "--controller", "gloo", "--config", "launch/configs/digits-cpu.yaml",
                   "data.dir=/data/digits", "model.name=resnet18", "data.image_size=32", "data.val_resize=32",
                   "train.epochs=1", "train.progress=lines", "train.run_dir=/runs/two", timeout=900, check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "preflight: 2 host(s) OK (nodea, nodeb)" in out
    rows = [json.loads(line) for line in (two_nodes / "two" / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in rows if r["kind"] == "summary")
    assert final["workers"] == 2 and final["ranks_agree"], final
    assert sorted(r["host"] for r in final["ranks"]) == ["nodea", "nodeb"], final["ranks"]


def _step_containers(env) -> set[str]:
    """buildah's working containers (a build's steps), which podman lists only with --external."""
    out = podman_cmd(env, "ps", "-a", "--external", "--format", "{{.ID}} {{.State}}").stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" Storage")}


def test_a_killed_builds_step_containers_are_removed_by_the_next_build(podman, tmp_path):
    """A build killed mid-step leaves its working container, which holds its image against every prune (17 GB of
    them filled this disk mid-build once). The next docker/build.sh removes those of its own image."""
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN sleep 20\n")   # the image carries our label
    before = _step_containers(podman)
    build = subprocess.Popen(["podman", "build", "--format", "docker", str(tmp_path)], env=podman,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _step_containers(podman) - before:
            assert build.poll() is None and time.monotonic() < deadline, "the build ended before its RUN step"
            time.sleep(0.2)
    finally:
        os.killpg(build.pid, 9)
        build.wait(timeout=60)
    left = _step_containers(podman) - before
    assert left                                                         # the leak this guards against is real
    p = subprocess.run(["bash", str(ROOT / "docker/build.sh"), "cpu"], env=podman, cwd=ROOT, capture_output=True,
                       text=True, timeout=2400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert not left & _step_containers(podman), p.stderr[-3000:]
    assert p.stderr.count("removed a killed build's step container") >= len(left), p.stderr[-3000:]


def test_other_pip_sources_reuse_the_install_layer(podman, tmp_path):
    """The build hands this machine's pip sources to the install step as a mounted pip.conf, not as build
    arguments (which are part of the step's cache key): under a HOME whose pip names other sources (fresh-ci's empty
    HOME against root's pip.conf), the ~8 GB install layer was rebuilt every time, 9-20 minutes. Now the image is
    the same one, every step from the cache."""
    image = podman_cmd(podman, "image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    home = tmp_path / "home"
    (home / ".config/pip").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    (home / ".config/pip/pip.conf").write_text(f"[global]\nfind-links = {tmp_path / 'wheels'}\n")
    env = {k: v for k, v in podman.items() if k not in ("PIP_CONFIG_FILE", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), HVDFAST_CACHE=str(tmp_path / "cache"))  # pip reads ~/.config/pip/pip.conf
    p = subprocess.run(["bash", str(ROOT / "docker/build.sh"), "cpu"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=2400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    conf = (tmp_path / "cache/build-pip.conf").read_text()
    assert f"find-links = {tmp_path / 'wheels'}" in conf, conf         # the build was given the other sources
    log = p.stdout + p.stderr
    steps = log.count("STEP ")
    assert steps > 10 and log.count("Using cache") == steps - 1, log[-3000:]      # every step but FROM
    assert podman_cmd(podman, "image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip() == image
