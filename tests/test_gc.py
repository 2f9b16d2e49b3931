"""Python's garbage collector on hvdfast's step schedule (engine.scheduled_gc): off between scheduled collections,
a collection every `train.gc_every` optimizer steps on every rank, and the collector as it was afterwards."""
import gc
import json
import sys
import weakref

from conftest import ROOT, run_launcher
from hvdfast import engine


class Node:
    pass


def test_a_cycle_lives_until_the_scheduled_step_and_the_collector_is_restored():
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with engine.scheduled_gc(3) as after_step:
        assert not gc.isenabled() and gc.get_freeze_count() > 0  # what existed is out of the collector's reach
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle: only the cyclic collector frees it
        alive = weakref.ref(a)
        del a, b
        for _ in range(2000):
            Node()  # allocations that would have triggered an automatic collection
        after_step(1)
        after_step(2)
        assert alive() is not None
        after_step(3)
        assert alive() is None
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_zero_leaves_the_collector_alone():
    with engine.scheduled_gc(0) as after_step:
        assert gc.isenabled() and gc.get_freeze_count() == 0
        after_step(0)


def test_training_collects_only_on_schedule_on_every_rank(digits_dir, tmp_path):
    proc = run_launcher("mpirun", 2, [sys.executable, str(ROOT / "tests/parallel/gc_schedule.py"), str(tmp_path),
                                      str(digits_dir), "3"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    steps = ranks[0]["steps"]
    assert steps >= 6
    for r in ranks:
        # full collections at steps 3, 6, ... and none of Python's own (generation 0 and 1) while training
        assert r["inside"] == {"2": steps // 3}, r
        assert r["enabled_after"] and r["frozen_after"] == 0
