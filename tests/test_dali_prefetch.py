"""The next training epoch's DALI pipeline is built ahead, in a thread, and gives exactly the batches a pipeline
built on the spot would (order and augmentation are functions of seed, epoch and rank alone)."""
import pytest
import torch

from conftest import make_jpeg_tree

pytest.importorskip("nvidia.dali")


def loader(tree):
    from hvdfast import config, data
    from hvdfast.dist import DistInfo
    cfg = config.load(None, [f"data.dir={tree}", "data.backend=dali", "data.batch_size=4", "data.image_size=32",
                             "data.val_resize=32", "data.workers=1", "model.channels_last=false"])
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
    second = batches(ahead.epoch(1))
    spot = loader(tree)
    assert spot._next is None
    again = batches(spot.epoch(1))                                 # epoch 1 built directly, no epoch 0 before it
    assert len(second) == len(again) == len(first) == 5            # 18 images, batch 4: 5 batches (last padded)
    for (x1, y1), (x2, y2) in zip(second, again):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)
    # a different epoch really is different data, so the comparison above could fail
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, second))
    # asking for another epoch than the one built ahead (a resume) drops it and builds the right one
    third = batches(ahead.epoch(3))
    assert third and ahead._next[0] == 4
