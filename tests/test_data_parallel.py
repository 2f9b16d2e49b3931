"""Sharding through the real launcher (horovodrun --gloo, 2 ranks) for the DALI and torchvision backends."""
import json
import sys

import pytest

from conftest import ROOT, make_jpeg_tree, run_launcher

BATCH = 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    # 21 classes of one image each, so a label names an image. 21 training images are not a multiple of
    # 2 ranks x 4, so the last batches need padding.
    return make_jpeg_tree(tmp_path_factory.mktemp("tree"), classes=21, per_class={"train": 1, "val": 1})


@pytest.fixture(scope="module")
def packed(tree, tmp_path_factory):
    from hvdfast.data.pack import pack
    dst = tmp_path_factory.mktemp("packed")
    counts = pack(tree, dst, shard_size=8)
    assert counts == {"train": {"samples": 21, "shards": 3}, "val": {"samples": 21, "shards": 3}}
    return dst


@pytest.fixture(scope="module", params=["dali", "torchvision", "dali-webdataset"])
def shards(request, tree, packed, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"shards-{request.param}")
    source, backend = (packed, "dali") if request.param == "dali-webdataset" else (tree, request.param)
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/shards.py"), str(out), str(source),
                                    backend, str(BATCH)], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["backend"] == {"dali-webdataset": "dali-webdataset"}.get(request.param, request.param)
    return request.param, ranks


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


@pytest.mark.parametrize("backend", ["dali", "torchvision"])
def test_a_validation_split_smaller_than_the_world_is_counted_once(tmp_path, backend):
    """2 validation images, 3 ranks: DALI refuses more shards than samples (it stopped every rank at the first
    validation, after an epoch of training, with a traceback each); now ranks 0 and 1 read one each, rank 2 none."""
    tree = make_jpeg_tree(tmp_path / "tree", classes=2, per_class={"train": 3, "val": 1})
    proc = run_launcher("gloo", 3, [sys.executable, str(ROOT / "tests/parallel/shards.py"), str(tmp_path), str(tree),
                                    backend, "2"], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    assert [r["val"] for r in ranks] == [[0], [1], []]


def test_validation_over_two_ranks_equals_one_rank_alone(digits_dir, tmp_path):
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/eval_equiv.py"), str(tmp_path),
                                    str(digits_dir)], timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "rank0.json").read_text())
    for backend, r in res.items():
        loss2, top1_2, top5_2, n2 = r["two_ranks"]
        loss1, top1_1, top5_1, n1 = r["one_rank"]
        assert n2 == n1 == 360, backend                   # every validation image once, none twice
        assert top1_2 == top1_1 and top5_2 == top5_1, backend
        assert loss2 == pytest.approx(loss1, rel=1e-4), backend
        assert 36 < top1_1 < 360                          # trained weights: neither chance nor trivial


def test_rank_0_lists_the_folder_for_every_rank(tree, tmp_path):
    # The other ranks' own scan fails in the script: they can only have rank 0's listing, and rank 0's message.
    missing = tmp_path / "no-such-data"
    proc = run_launcher("gloo", 2, [sys.executable, str(ROOT / "tests/parallel/scan_once.py"), str(tmp_path),
                                    str(tree), str(missing)], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    from hvdfast.data.folder import DataError, scan
    train, val = scan(tree)
    here = {s.root.name: {"root": str(s.root), "classes": list(s.classes), "files": list(s.files),
                          "labels": list(s.labels)} for s in (train, val)}
    assert ranks[0]["tree"] == ranks[1]["tree"] == here
    with pytest.raises(DataError) as exc:
        scan(missing)
    assert ranks[0]["missing"] == ranks[1]["missing"] == {"error": str(exc.value)}
