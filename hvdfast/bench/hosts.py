"""A small cluster on this machine: one network namespace per "host", joined by a bridge (multi-host tests, and
`hvdfast bench cluster`, which also shapes the links).

Each host has its own network stack (address 10.77.X.n on an interface named hvd0 everywhere, as on a real
cluster), its own hostname (UTS namespace), an /etc/hosts naming every host (mount namespace), and its own sshd
bound inside it. Everything else is shared (file system, Python, the venv), as on a cluster with a shared home.
Traffic stays on the bridge (the cluster's switch: it runs none of the machine's iptables hooks, which would do
a switch's filtering on the sending host's core); `stop()` kills the sshds and deletes the namespaces and the
bridge. `shape(rate)` puts a token-bucket filter (tc tbf: this kernel has no netem) on both ends of every host's
link, so each host sends and receives at most `rate` (e.g. "1gbit"; measured 0.97 Gbit/s at 1gbit here).

Hosts are declared as (name, hostname, extra sshd_config lines): a host may report another host's hostname (a
cloned node) or carry environment through sshd's SetEnv (version skew), and `down` names get an address but no sshd.
`cpus` gives a host cores of its own (taskset on its sshd, so everything started there through ssh inherits them),
as a real host has: without it the hosts share every core of this machine.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def unavailable() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces and run sshd"
    if not Path(SSHD).is_file():
        return f"{SSHD} is missing (apt-get install openssh-server; launch/test.sh installs it when root)"
    for tool in ("ip", "tc", "unshare", "taskset", "ssh-keygen", "ssh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux, openssh-client)"
    return None


def _sh(*cmd: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")


class Cluster:
    def __init__(self, workdir: Path, hosts: list[tuple[str, str, list[str]]], down: list[str] = (),
                 cpus: dict[str, str] | None = None):
        self.dir = workdir
        self.cpus = dict(cpus or {})  # host name -> CPU list in taskset's syntax ("0", "2-3")
        self.tag = f"{os.getpid() % 100000}"
        self.net = f"10.77.{os.getpid() % 250}"
        self.hosts = hosts
        self.down = list(down)
        self.addr = {name: f"{self.net}.{i + 1}" for i, (name, _, _) in enumerate(hosts)}
        self.addr.update({name: f"{self.net}.{200 + i}" for i, name in enumerate(self.down)})
        self.bridge = f"hvdbr{self.tag}"
        self.namespaces: list[str] = []
        self.veths: list[str] = []
        self.switch_filtering_off = False
        self.procs: list[subprocess.Popen] = []
        self.bin = workdir / "bin"

    # -- setup -------------------------------------------------------------------------------------------------
    def start(self) -> "Cluster":
        d = self.dir
        for key in ("hostkey", "id"):
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key))
        (d / "hosts").write_text("127.0.0.1 localhost\n" +
                                 "".join(f"{a} {n}\n" for n, a in self.addr.items()))
        (d / "ssh_config").write_text(
            f"Host *\n  IdentityFile {d / 'id'}\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n"
            f"  LogLevel ERROR\n  ConnectTimeout 5\n")
        # horovodrun and Open MPI call `ssh` from PATH: this one reads the cluster's client config.
        self.bin.mkdir()
        (self.bin / "ssh").write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {d / 'ssh_config'} \"$@\"\n")
        (self.bin / "ssh").chmod(0o755)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        # The bridge is the cluster's switch. Where br_netfilter is loaded (net.bridge.bridge-nf-call-iptables=1,
        # as on this machine), every frame crossing a bridge also goes through the machine's iptables, in the
        # softirq of the core that sent it: filtering that a real switch does not put on its hosts' cores (measured:
        # fp16 on the unlimited link 21.6 -> 22.8 img/s, DDP's bf16 hook 20.9 -> 21.8). Off for this bridge only;
        # best effort (an old iproute2 lacks the options), `switch_filtering_off` says whether it took.
        self.switch_filtering_off = subprocess.run(
            ["ip", "link", "set", "dev", self.bridge, "type", "bridge", "nf_call_iptables", "0",
             "nf_call_ip6tables", "0", "nf_call_arptables", "0"], capture_output=True).returncode == 0
        _sh("ip", "addr", "add", f"{self.net}.254/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for i, (name, hostname, extra) in enumerate(self.hosts):
            ns = f"hvdfast{self.tag}-{name}"
            veth = f"hv{self.tag}x{i}"
            _sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "hvd0", "netns", ns)
            self.veths.append(veth)
            _sh("ip", "link", "set", veth, "master", self.bridge, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.addr[name]}/24", "dev", "hvd0")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "hvd0", "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            cfg = d / f"sshd_{name}.conf"
            cfg.write_text("\n".join([
                "Port 22", f"HostKey {d / 'hostkey'}", f"AuthorizedKeysFile {d / 'id.pub'}",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "UsePAM no", "StrictModes no", "PidFile none", *extra]) + "\n")
            pin = f"taskset -c {self.cpus[name]} " if name in self.cpus else ""
            inner = (f"hostname {shlex.quote(hostname)} && mount --bind {d / 'hosts'} /etc/hosts && "
                     f"exec {pin}{SSHD} -D -e -f {cfg}")
            log = open(d / f"sshd_{name}.log", "w")
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--uts", "--mount", "--fork", "sh", "-c", inner],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        for name, _, _ in self.hosts:
            self._wait_for_sshd(name)
        return self

    def _wait_for_sshd(self, name: str) -> None:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection((self.addr[name], 22), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"sshd on {name} did not start: {(self.dir / f'sshd_{name}.log').read_text()[-500:]}")

    def shape(self, rate: str | None) -> None:
        """Limit every host's link to `rate` in each direction (tc units: 100mbit, 1gbit, ...); None: no limit."""
        ends = [(None, v) for v in self.veths] + [(ns, "hvd0") for ns in self.namespaces]
        for ns, dev in ends:
            prefix = ["ip", "netns", "exec", ns] if ns else []
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
            if rate:
                # burst: at least 512 KiB, and a 4 ms refill at line rate (tbf needs burst >= rate / HZ)
                burst = max(512 * 1024, int(tc_bits(rate) / 8 * 0.004))
                _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", str(burst),
                    "latency", "200ms")

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self._end_processes()
        for veth in self.veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def _end_processes(self) -> None:
        """Every process still inside a host (ssh sessions and what they started: a worker of a run that was cut
        short). sshd's sessions are not in its process group, and deleting a namespace's name does not end what
        runs in it: TERM, up to 5 s, then KILL."""
        def pids() -> list[int]:
            out = []
            for ns in self.namespaces:
                p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
                out += [int(x) for x in p.stdout.split()]
            return out
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            left = pids()
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while left and time.time() < deadline:
                time.sleep(0.1)
                left = pids()
            if not left:
                return

    # -- use ---------------------------------------------------------------------------------------------------
    def ssh(self, host: str, command: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        """Log into `host` (as a user would on a login node) and run `command` there, in `cwd` with `env`."""
        return subprocess.run(self._ssh_argv(host, command, env, cwd), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def ssh_start(self, host: str, command: str, env: dict, cwd: Path, log: Path) -> subprocess.Popen:
        """Like ssh(), without waiting: output to `log`."""
        return subprocess.Popen(self._ssh_argv(host, command, env, cwd), stdout=open(log, "w"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _ssh_argv(self, host: str, command: str, env: dict, cwd: Path) -> list[str]:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "PATH")
        remote = f"export {exports} PATH={self.bin}:{shlex.quote(env.get('PATH', ''))}; cd {cwd} && {command}"
        return [str(self.bin / "ssh"), "-o", "BatchMode=yes", self.addr[host], remote]


def tc_bits(rate: str) -> float:
    """A tc rate ("100mbit", "1gbit", "10gbit") in bits per second."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}
    for unit, factor in units.items():
        if rate.endswith(unit):
            return float(rate[:-len(unit)]) * factor
    raise ValueError(f"link rate {rate!r}: use kbit, mbit or gbit (e.g. 100mbit, 1gbit)")
