"""Running the launcher (horovodrun or mpirun) for `hvdfast launch`: its stderr relayed with horovodrun's own
traceback condensed to one line and the ranks' lines on a bug folded into one, and a scheduler's warning (SIGUSR1,
SIGTERM) passed to the workers as a stop request, whose exit code (75) survives horovodrun's reporting."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..process import BUG_LINE, ranges
from . import commands


WORKER_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


def local_workers(pid: int) -> list:
    """The training processes below launcher `pid` on this host (they hold a rank in their environment; the shells
    and the launchers between do not)."""
    import psutil  # a Horovod dependency
    out = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if any(v in proc.environ() for v in WORKER_VARS):
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


# horovodrun's own report of a worker that exited non-zero: a Python traceback of horovodrun's internals ending in
# this RuntimeError. The worker's message (rank 0's one line) is already above it.
_WORKER_EXIT = re.compile(r"RuntimeError: Horovod detected that one or more processes exited with non-zero status"
                          r".*?Process name: (?P<name>\S+)\s+Exit code: (?P<code>-?\d+)", re.S)
_PREFIXED = re.compile(r"^\[\d+(,\d+)?\]<std(out|err)>:")  # a worker's line, as horovodrun relays it
# mpirun's report that it is ending the job after a rank's non-zero exit (directly, or under horovodrun --mpi)
_ABORTED = "Per user-direction, the job has been aborted."
ABORT_GRACE_S = 30.0  # how long a launcher that aborted the job may take to end it (it takes a second or two)


class StderrRelay:
    """Copies the launcher's stderr line by line, holding back a traceback of the launcher's own (unprefixed lines
    from "Traceback" on; workers' lines still pass): at the end, horovodrun's "one or more processes exited with
    non-zero status" becomes one line; any other traceback is shown as it was. A bug every rank meets is one line
    from each rank but 0 (process.internal_error): the first passes, the rest are folded into one line at the end
    (at 1,024 ranks, one line instead of 1,022 more).

    The end is EOF or finish(), whichever comes first: horovodrun's helpers (its per-rank middlemen, multiprocessing's
    resource tracker) inherit its stderr and may hold it open for seconds after horovodrun itself exited, so the
    supervisor ends the relay itself rather than lose what is held when it gives up waiting."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.held: list[str] = []
        self.folded: dict[str, tuple[str, list[int]]] = {}  # a bug's line -> (its tracebacks' folder, other ranks)
        self.lock = threading.Lock()
        self.ended = False
        self.aborted_at: float | None = None  # when the launcher said it is ending the job (_ABORTED)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for line in self.src:
            with self.lock:
                if self.ended:
                    return
                if self.aborted_at is None and _ABORTED in line:
                    self.aborted_at = time.monotonic()
                bug = BUG_LINE.match(line.rstrip("\n"))
                if bug and bug["what"] in self.folded:
                    self.folded[bug["what"]][1].append(int(bug["rank"]))
                    continue
                if bug:
                    self.folded[bug["what"]] = (bug["dir"] or "", [])
                if (self.held or line.startswith("Traceback (most recent call last):")) \
                        and not _PREFIXED.match(line) and not bug:
                    self.held.append(line)
                else:
                    self.dst.write(line)
                    self.dst.flush()
        self.finish()

    def finish(self, wait_s: float = 0.0) -> None:
        """Wait up to `wait_s` for EOF, then show what is held (once, whoever calls first)."""
        if wait_s:  # the supervisor's call (run() ends with finish() at EOF, waiting for nothing)
            self.thread.join(timeout=wait_s)
        with self.lock:
            if self.ended:
                return
            self.ended = True
            for what, (folder, ranks) in self.folded.items():
                if ranks:
                    where = f"; each rank's traceback is in {folder}/rank<r>.txt" if folder else ""
                    self.dst.write(f"hvdfast launch: {len(ranks)} more rank(s) met the same internal error (ranks "
                                   f"{ranges(ranks)}){where}\n")
            text = "".join(self.held)
            m = _WORKER_EXIT.search(text)
            if m:
                self.dst.write(f"hvdfast launch: worker {m['name']} exited with code {m['code']}; horovodrun ended "
                               f"the job (the workers' own messages are above)\n")
            else:
                self.dst.write(text)
            self.dst.flush()


def supervise(cmd: list[str], target: str, run_dir: Path) -> int:
    """Run the launcher; a scheduler's warning (SIGUSR1, SIGTERM) reaching this process becomes a stop request to
    the workers, which agree on a step, checkpoint there and exit with stop.EXIT_STOPPED, as this process then does.

    mpirun passes SIGUSR1 on to every rank on every host (a SIGTERM would kill them), so it gets SIGUSR1.
    horovodrun has no such forwarding (SIGUSR1 would kill it; SIGTERM gives the ranks 5 s before SIGKILL), so the
    workers on this host get SIGUSR1 directly and the stop vote carries it to the others; only where none runs here
    does horovodrun get SIGTERM."""
    from ..run import stop
    t0 = time.time()
    child = subprocess.Popen(cmd, env=commands.process_env(), stderr=subprocess.PIPE, text=True, errors="replace")
    relay = StderrRelay(child.stderr, sys.stderr)
    relay.thread.start()

    def forward(signum, frame):
        name = signal.Signals(signum).name
        if target == "mpirun":
            child.send_signal(signal.SIGUSR1)
            how = "mpirun passes SIGUSR1 to every rank"
        else:
            workers = local_workers(child.pid)
            for proc in workers:
                proc.send_signal(signal.SIGUSR1)
            if not workers:
                child.send_signal(signal.SIGTERM)
            how = (f"SIGUSR1 to the {len(workers)} worker(s) on this host" if workers
                   else "no worker on this host: SIGTERM to horovodrun, which gives the ranks 5 s")
        print(f"hvdfast launch: {name}: asking the workers to checkpoint and stop ({how})", file=sys.stderr,
              flush=True)

    previous = {sig: signal.signal(sig, forward) for sig in stop.SIGNALS}
    try:
        try:
            rc = _wait(child, relay)
        except KeyboardInterrupt:  # Ctrl-C reached the launcher too, which ends the job: wait for it, quietly
            rc = _wait(child, relay)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    relay.finish(wait_s=10)
    if stop.read(run_dir, since=t0) is not None:
        # The run's own record says the workers stopped on purpose: the launcher's code does not. horovodrun reports
        # any worker's non-zero exit as 1, and where it ended the workers itself (Ctrl-C, SIGTERM) it can report 0:
        # Horovod 0.28.1's safe_shell_exec reaps a worker's shell from its terminate thread (psutil's wait) while
        # another thread waits for the same shell with subprocess, whose wait then finds no child and reads 0. With
        # every rank so, horovodrun prints no report and exits 0 (seen once in CI, under load).
        if rc == 0:  # then no line says how the job ended but rank 0's: say it
            print(f"hvdfast launch: the workers stopped with exit code {stop.EXIT_STOPPED}; horovodrun lost their "
                  f"exit status and reported 0", file=sys.stderr, flush=True)
        return stop.EXIT_STOPPED
    return rc


def _wait(child: subprocess.Popen, relay: StderrRelay) -> int:
    """The launcher's exit code, once it ends. A launcher that said it is ending the job (a rank exited non-zero)
    and is still there ABORT_GRACE_S later is waiting on a host it cannot reach: mpirun waits for its daemon there,
    over an ssh connection that a dead link or host never closes (seen here: a host's link cut mid-training, the
    ranks ended by the watchdog, mpirun still waiting 17 minutes later). It is ended (_end_stuck)."""
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if relay.aborted_at is not None and time.monotonic() - relay.aborted_at >= ABORT_GRACE_S:
            return _end_stuck(child)


def _end_stuck(child: subprocess.Popen) -> int:
    """End a launcher stuck after its abort, with what it started on this host (the ssh to the lost host's daemon
    among them), and say so; the job's exit code is 1."""
    import psutil  # a Horovod dependency
    try:
        started = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    child.terminate()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    for proc in started:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    print(f"hvdfast launch: {Path(child.args[0]).name} had not ended {ABORT_GRACE_S:.0f} s after it aborted the job: "
          f"it was waiting on a host it cannot reach (a link or host that failed). Ended it and what it started on "
          f"this host; the workers' own messages are above.", file=sys.stderr, flush=True)
    return 1
