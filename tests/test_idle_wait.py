"""hvdfast's build patch to Horovod's background thread (launch/install.sh, "the background thread's idle wait"),
through the real launchers at 2 ranks: with HVDFAST_IDLE_WAIT_MS set, a rank with nothing queued runs no
coordination rounds until it enqueues (or shuts down); unset (0), Horovod cycles as it always did."""
import json
import sys

import pytest

from conftest import ROOT, run_launcher

NP = 2
CYCLE_MS = 5
# far longer than the script runs: were an enqueue or a shutdown not to wake the thread, a call would take this long
IDLE_CAP_MS = 30_000


def run(kind: str, idle_ms: int, tmp_path) -> tuple[list[dict], int]:
    timeline = tmp_path / "timeline.json"
    env = {"HOROVOD_CYCLE_TIME": str(CYCLE_MS), "HVDFAST_IDLE_WAIT_MS": str(idle_ms),
           "HOROVOD_TIMELINE": str(timeline), "HOROVOD_TIMELINE_MARK_CYCLES": "1"}
    proc = run_launcher(kind, NP, [sys.executable, str(ROOT / "tests/parallel/idle_wait.py"), str(tmp_path)],
                        timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(NP)]
    return ranks, timeline.read_text().count('"CYCLE_START"')


@pytest.mark.parametrize("kind", ["gloo", "mpirun"])
def test_idle_rank_runs_no_rounds_and_wakes_on_enqueue_and_shutdown(kind, tmp_path):
    ranks, cycles = run(kind, IDLE_CAP_MS, tmp_path)
    want = [[float(sum(r + i for r in range(NP)))] * 4 for i in range(5)]
    assert [r["sums"] for r in ranks] == [want] * NP
    # rank 0's ~2.5 s: about one round per call (rank 0 waits inside it until rank 1 enqueues and joins), none in
    # between (6 here); a round every 5 ms, as below, would be hundreds
    assert cycles < 40, cycles
    # each call returned once both ranks had enqueued (rank 0 waits ~0.1 s for rank 1), not at the 30 s cap
    assert max(max(r["calls_s"]) for r in ranks) < IDLE_CAP_MS / 1000 / 10
    assert max(r["shutdown_s"] for r in ranks) < IDLE_CAP_MS / 1000 / 10


def test_unset_horovod_cycles_as_before(tmp_path):
    ranks, cycles = run("gloo", 0, tmp_path)
    assert [r["sums"][0] for r in ranks] == [[1.0] * 4] * NP
    assert cycles > 100, cycles  # ~2.5 s at 5 ms a cycle: the stock loop, as the patch leaves it with 0
