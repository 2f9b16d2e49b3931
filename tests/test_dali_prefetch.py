"""The next training epoch's DALI pipeline is built ahead, in a thread, and gives exactly the batches a pipeline
built on the spot would (order and augmentation are functions of seed, epoch and rank alone)."""
import time

import pytest
import torch

from conftest import make_jpeg_tree

pytest.importorskip("nvidia.dali")


def loader(tree, epochs=90):
    from hvdfast import config, data
    from hvdfast.dist import DistInfo
    cfg = config.load(None, [f"data.dir={tree}", "data.backend=dali", "data.batch_size=4", "data.image_size=32",
                             "data.val_resize=32", "data.workers=1", "model.channels_last=false",
                             f"train.epochs={epochs}"])
    info = DistInfo(rank=0, local_rank=0, size=1, local_size=1, cores_per_rank=1, device=torch.device("cpu"),
                    controller="none")
    return data.build(cfg, info).train


def batches(gen):
    return [(x.clone(), y.clone()) for x, y in gen]


def test_next_epoch_is_built_ahead_and_identical_to_one_built_on_the_spot(tmp_path):
    tree = make_jpeg_tree(tmp_path, classes=6, per_class={"train": 3, "val": 1})
    ahead = loader(tree)
    first = batches(ahead.epoch(0))
    assert ahead._next is not None and ahead._next[0] == 1        # epoch 1 was started while epoch 0 ran
    ahead._next[1].join()
    assert "it" in ahead._next[2]                                  # ... and is ready before it is asked for
    build = ahead._iterator
    ahead._iterator = lambda e: (time.sleep(1.0) if e == 2 else None, build(e))[1]  # epoch 2 builds slowly
    second = batches(ahead.epoch(1))
    spot = loader(tree)
    assert spot._next is None
    again = batches(spot.epoch(1))                                 # epoch 1 built directly, no epoch 0 before it
    assert len(second) == len(again) == len(first) == 5            # 18 images, batch 4: 5 batches (last padded)
    for (x1, y1), (x2, y2) in zip(second, again):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)
    # a different epoch really is different data, so the comparison above could fail
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, second))
    # asking for another epoch than the one built ahead (a resume) drops it, after joining its builder (a pipeline
    # still being built must not outlive its loader's control), and builds the right one
    _, builder, _ = ahead._next                                    # epoch 2, started while epoch 1 ran
    third = batches(ahead.epoch(3))
    assert third and ahead._next[0] == 4 and not builder.is_alive()


def test_nothing_is_built_past_the_last_epoch_and_close_joins_the_builder(tmp_path):
    tree = make_jpeg_tree(tmp_path, classes=4, per_class={"train": 2, "val": 1})
    train = loader(tree, epochs=2)
    batches(train.epoch(0))
    _, thread, _ = train._next                                     # epoch 1 is being built
    train.close()
    assert train._next is None and not thread.is_alive()
    batches(train.epoch(1))                                        # built on the spot after close ...
    assert train._next is None                                     # ... and epoch 2 does not exist: nothing ahead


EXIT_MID_BUILD = """
import sys, torch
from hvdfast import config, data
from hvdfast.dist import DistInfo
cfg = config.load(None, ["data.dir=" + sys.argv[1], "data.backend=dali", "data.batch_size=2", "data.image_size=32",
                         "data.val_resize=32", "data.workers=1"])
info = DistInfo(rank=0, local_rank=0, size=1, local_size=1, cores_per_rank=1, device=torch.device("cpu"),
                controller="none")
d = data.build(cfg, info)
for _ in d.train.epoch(0):
    break                                                          # leave while epoch 1 is being built
print("left", d.train._next[1].is_alive())
"""


def test_a_process_leaving_while_the_next_epoch_builds_exits_cleanly(tmp_path):
    import subprocess
    import sys
    tree = make_jpeg_tree(tmp_path, classes=4, per_class={"train": 4, "val": 1})
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", EXIT_MID_BUILD, str(tree)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "left" in proc.stdout, proc.stderr[-2000:]
        assert "terminate" not in proc.stderr, proc.stderr[-2000:]


EXIT_AFTER_DROP = """
import atexit, sys, threading, time, torch
def at_finalization():  # registered before hvdfast's exit hook, so it runs after it
    alive = [t.name for t in threading.enumerate() if t.name.startswith("hvdfast-dali")]
    print("builders alive at finalization:", alive, flush=True)
atexit.register(at_finalization)
from hvdfast import config, data
from hvdfast.dist import DistInfo
cfg = config.load(None, ["data.dir=" + sys.argv[1], "data.backend=dali", "data.batch_size=2", "data.image_size=32",
                         "data.val_resize=32", "data.workers=1"])
info = DistInfo(rank=0, local_rank=0, size=1, local_size=1, cores_per_rank=1, device=torch.device("cpu"),
                controller="none")
d = data.build(cfg, info)
train = d.train
class Built:  # stands for the built iterator, whose pipeline and tensors take a while to free
    def __del__(self):
        time.sleep(1.5)
train._iterator = lambda epoch: (time.sleep(0.5), Built())[1]
train._prefetch(1)
del d, train      # the loader now lives only in its builder's closure
time.sleep(1.0)   # the build is done and the builder is freeing the loader, then what it built
"""


def test_a_dropped_loaders_builder_is_joined_before_the_interpreter_finalizes(tmp_path):
    """The rare abort at a DALI rank's exit (see hvdfast/data/dali.py): a builder that outlived its loader was still
    freeing the pipeline and tensors it built when the main thread, with no live loader to close, went on into the
    interpreter's finalization. The exit hook must join it; here the freeing is made slow so that it is still going
    on when the main thread reaches the exit hooks."""
    import subprocess
    import sys
    tree = make_jpeg_tree(tmp_path, classes=2, per_class={"train": 2, "val": 1})
    proc = subprocess.run([sys.executable, "-c", EXIT_AFTER_DROP, str(tree)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "builders alive at finalization: []" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_a_build_that_does_not_finish_is_named_not_waited_on_forever(tmp_path, monkeypatch):
    from hvdfast.data import dali
    from hvdfast.data.folder import DataError
    tree = make_jpeg_tree(tmp_path, classes=2, per_class={"train": 4, "val": 1})
    train = loader(tree)
    monkeypatch.setattr(dali, "JOIN_TIMEOUT_S", 0.2)
    build = train._iterator
    train._iterator = lambda e: (time.sleep(2.0) if e == 1 else None, build(e))[1]  # epoch 1 "hangs" for 2 s
    batches(train.epoch(0))
    with pytest.raises(DataError, match="epoch 1 was still building after 0.2 s"):
        batches(train.epoch(1))
    alive = [t for t in dali._BUILDERS if t.is_alive()]
    assert [t.name for t in alive] == ["hvdfast-dali-epoch-1"]   # not joined yet: listed, so the exit hook joins it
    alive[0].join()
    dali._close_loaders()
    assert not dali._BUILDERS
