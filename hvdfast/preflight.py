"""Preflight over ssh (`hvdfast doctor --hosts …`, and the first step of `hvdfast launch hosts|mpirun`).

For every host, in parallel: ssh in the way horovodrun and Open MPI will (no password prompt: BatchMode), run
`<python> -m hvdfast.preflight --probe` there, and compare what comes back. One line per problem, naming the host
and the remedy:
  - not reachable over ssh without a password,
  - hvdfast's Python missing at the same path,
  - two hosts reporting the same hostname (Horovod and Open MPI tell nodes apart by hostname),
  - Python / torch / torchvision / Horovod (version and build) / DALI different from this host,
  - the chosen network interface missing, the data folder not readable.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .argtypes import host_slots

MARK = "HVDFAST-PROBE "
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
COMPARED = ("python", "torch", "torchvision", "horovod", "dali", "hvdfast")


def hostfile_lines(hostfile: str) -> list[list[str]]:
    """The words of each line of a hostfile that says something (# comments and blank lines left out)."""
    from .config import ConfigError
    if not Path(hostfile).is_file():
        raise ConfigError(f"hostfile {hostfile} does not exist; write one 'host slots=N' line per node.")
    return [words for line in Path(hostfile).read_text().splitlines() if (words := line.split("#", 1)[0].split())]


def hostfile_entries(hostfile: str) -> list[tuple[str, int | None]]:
    """(host, slots or None where the line gives none) per line of a hostfile ('h1 slots=4' / 'h1:4' / 'h1' lines,
    # comments)."""
    entries = []
    for first, *rest in hostfile_lines(hostfile):
        name, _, slots = first.partition(":")
        slots = slots or next((r.partition("=")[2] for r in rest if r.startswith("slots=")), "")
        entries.append((name, int(slots) if slots.isdigit() else None))
    return entries


def parse_hosts(hosts: str | None = None, hostfile: str | None = None) -> list[str]:
    """Host names from 'h1:4,h2:4' or a hostfile (hostfile_entries), in order, unique."""
    from .config import ConfigError
    names = [name for name, _ in hostfile_entries(hostfile)] if hostfile else []
    if hosts:
        names += [name for name, _ in host_slots(hosts)]
    if not names:
        raise ConfigError("no hosts given: --hosts h1:4,h2:4 or --hostfile FILE.")
    return list(dict.fromkeys(names))


def probe(data: str | None = None) -> dict:
    """What this host has: the doctor report, reduced to what must match, plus interfaces and the data folder."""
    from . import __version__, doctor
    report, problems = doctor.collect()
    h = report.get("horovod")
    horovod = None
    if isinstance(h, dict):
        horovod = h.get("version")
        if "controllers" in h:
            built = [k.upper() for k, v in {**h["controllers"], **h["tensor_operations"]}.items() if v]
            horovod = f"{horovod} ({', '.join(sorted(set(built)))}{', CUDA' if h['cuda'] else ''})"
    out = {"hostname": socket.gethostname(), "python": report["python"], "executable": sys.executable,
           "torch": report.get("torch"), "torchvision": report.get("torchvision"), "horovod": horovod,
           "dali": report.get("dali"), "hvdfast": __version__, "nics": [n for _, n in socket.if_nameindex()],
           "problems": problems}
    if data:
        out["data_readable"] = os.path.isdir(data) and os.access(data, os.R_OK | os.X_OK)
    return out


def _ssh_remedy(host: str, said: str) -> str:
    if "resolve hostname" in said:
        return f"Fix the name, or make {host} resolve on this host (DNS or /etc/hosts)."
    if "Permission denied" in said:
        return f"Set up key-based login (ssh-copy-id {host}), then re-run."
    if "Host key verification failed" in said:
        return f"Accept its host key once (ssh {host} true), then re-run."
    return f"Check that {host} is up and that sshd listens on it (port 22 unless ~/.ssh/config says otherwise)."


def _probe_output(p: subprocess.CompletedProcess) -> dict | None:
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return None


def _local() -> dict:
    """This host's probe, in a process of its own as on every other host: it runs beside the remote ones, and the
    launcher itself never imports torch, Horovod or DALI (seconds, and their memory, before the job starts)."""
    p = subprocess.run([sys.executable, "-m", "hvdfast.preflight", "--probe"], capture_output=True, text=True,
                       timeout=180, stdin=subprocess.DEVNULL)
    said = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return _probe_output(p) or {"error": f"this host's own probe failed (exit {p.returncode}: {said}); run "
                                         f"`hvdfast doctor` here to see why."}


def _remote(host: str, python: str, data: str | None, ssh: str) -> dict:
    cmd = [python, "-m", "hvdfast.preflight", "--probe"] + (["--data", data] if data else [])
    try:
        p = subprocess.run([ssh, *SSH_OPTS, host, " ".join(shlex.quote(c) for c in cmd)], capture_output=True,
                           text=True, timeout=180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"{host}: ssh did not answer within 180 s; check that the host is up and reachable."}
    out = _probe_output(p)
    if out is not None:
        return out
    said = (p.stderr.strip().splitlines() or ["no output"])[-1]
    if p.returncode == 255:
        return {"error": f"{host}: not reachable over ssh without a password ({said}). {_ssh_remedy(host, said)}"}
    if p.returncode == 127 or "No such file" in said:
        return {"error": f"{host}: {python} does not exist there ({said}). Install hvdfast at the same path on "
                         f"every host (launch/install.sh), or pass --remote-python."}
    return {"error": f"{host}: the probe failed (exit {p.returncode}: {said}). Run `{python} -m hvdfast doctor` "
                     f"on {host} to see why."}


def check(hosts: list[str], nic: str | None = None, data: str | None = None, python: str | None = None,
          ssh: str = "ssh") -> tuple[dict, list[str]]:
    """(reports by host, problems): every problem is one line naming the host and the remedy."""
    python = python or sys.executable
    with ThreadPoolExecutor(max_workers=min(32, len(hosts) + 1)) as pool:
        mine = pool.submit(_local)
        reports = dict(zip(hosts, pool.map(lambda h: _remote(h, python, data, ssh), hosts)))
        here = mine.result()
    problems = [r["error"] for r in [*reports.values(), here] if "error" in r]
    ok = {h: r for h, r in reports.items() if "error" not in r}
    by_name: dict[str, list[str]] = {}
    for h, r in ok.items():
        by_name.setdefault(r["hostname"], []).append(h)
    for name, hs in by_name.items():
        if len(hs) > 1:
            problems.append(f"{', '.join(hs[:-1])} and {hs[-1]} report the same hostname '{name}': Horovod "
                            f"and Open MPI tell nodes apart by hostname, so their ranks would share local ranks. "
                            f"Give each node a unique hostname (hostnamectl set-hostname), or list each machine "
                            f"once.")
    for h, r in ok.items():
        for k in COMPARED if "error" not in here else ():
            if r.get(k) != here.get(k):
                problems.append(f"{h}: {k} {r.get(k)} but this host ({here['hostname']}) has {here.get(k)}; "
                                f"install the same versions everywhere (launch/install.sh on every node).")
        if nic and nic not in r["nics"]:
            problems.append(f"{h}: no network interface '{nic}' (it has {', '.join(r['nics'])}); choose an "
                            f"interface every host has (--nic).")
        if data and not r.get("data_readable"):
            problems.append(f"{h}: data folder {data} is missing or not readable; put the data set on a shared "
                            f"file system or copy it to the same path on every host.")
        problems += [f"{h}: {p}" for p in r.get("problems", [])]
    return reports, problems


def render(reports: dict, problems: list[str]) -> str:
    lines = [f"hvdfast preflight: {len(reports)} host(s)"]
    for h, r in reports.items():
        if "error" in r:
            lines.append(f"  {h:<16} UNREACHABLE")
        else:
            lines.append(f"  {h:<16} {r['hostname']:<16} Python {r['python']}  torch {r['torch']}  "
                         f"Horovod {r['horovod']}  DALI {r['dali'] or 'missing'}")
    if problems:
        lines += ["PROBLEMS:"] + [f"  - {p}" for p in problems]
    else:
        lines.append("OK: every host is reachable, uniquely named and runs the same stack.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hvdfast.preflight")
    p.add_argument("--probe", action="store_true", help="(run on each host by the preflight)")
    p.add_argument("--data")
    args = p.parse_args(argv)
    if args.probe:
        print(MARK + json.dumps(probe(args.data), default=str), flush=True)
        return 0
    p.error("use `hvdfast doctor --hosts …`")
    return 2


if __name__ == "__main__":
    sys.exit(main())
