"""Sharding through the real launcher (horovodrun --gloo, 2 ranks) for the DALI and torchvision backends."""
import json
import sys

import pytest

from conftest import ROOT, make_jpeg_tree, run_launcher

BATCH = 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    # 3 classes x 7 = 21 training images: not a multiple of 2 ranks x 4, so the last batches need padding.
    return make_jpeg_tree(tmp_path_factory.mktemp("tree"), classes=3, per_class={"train": 7, "val": 3})


@pytest.fixture(scope="module", params=["dali", "torchvision"])
def shards(request, tree, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"shards-{request.param}")
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/shards.py"), str(out), str(tree),
                                    request.param, str(BATCH)], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return request.param, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_every_rank_takes_the_same_number_of_full_steps(shards):
    _, ranks = shards
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"] > 0
    for r in ranks:
        assert len(r["train"]) == r["steps_per_epoch"]
        assert all(len(b) == BATCH for b in r["train"])


def test_shards_cover_the_set_and_overlap_only_by_padding(shards):
    backend, ranks = shards
    n = ranks[0]["n_train"]
    seen = [[i for b in r["train"] for i in b] for r in ranks]
    assert set(seen[0]) | set(seen[1]) == set(range(n))          # every training image, every epoch
    # 21 images, 2 ranks x 4: 3 steps each = 24 samples, so exactly 3 are padding repeats.
    assert len(seen[0]) + len(seen[1]) - n == 2 * ranks[0]["steps_per_epoch"] * BATCH - n == 3
    assert len(set(seen[0]) & set(seen[1])) <= 1                # at most the wrap-around sample of 21 -> 22
    # The order is reshuffled across ranks each epoch.
    assert set(seen[0]) != set(ranks[0]["train_epoch1"])


def test_validation_counts_every_image_exactly_once(shards):
    _, ranks = shards
    both = sorted(ranks[0]["val"] + ranks[1]["val"])
    assert both == list(range(ranks[0]["n_val"]))
