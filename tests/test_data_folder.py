import os
from pathlib import Path

import pytest

from hvdfast.data.folder import DataError, check_size, scan, shard_indices

from conftest import make_jpeg_tree


@pytest.mark.parametrize("n,size", [(10, 2), (11, 2), (7, 3), (5, 4)])
def test_training_shards_cover_everything_with_equal_sizes(n, size):
    shards = [shard_indices(n, r, size, seed=3, epoch=1) for r in range(size)]
    assert len({len(s) for s in shards}) == 1                 # same steps on every rank
    assert set().union(*map(set, shards)) == set(range(n))    # nothing left out
    assert sum(map(len, shards)) - n < size                   # padding only to a multiple of size


def test_order_is_a_function_of_seed_and_epoch():
    a = shard_indices(100, 0, 2, seed=1, epoch=4)
    assert a == shard_indices(100, 0, 2, seed=1, epoch=4)
    assert a != shard_indices(100, 0, 2, seed=1, epoch=5)
    assert a != shard_indices(100, 0, 2, seed=2, epoch=4)


def test_validation_shards_count_every_image_once():
    shards = [shard_indices(11, r, 3, seed=0, epoch=0, shuffle=False) for r in range(3)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(11))


def test_scan_reports_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist.*hvdfast data digits"):
        scan(tmp_path / "nope")
    # a data set without its val/ (or train/): said as such, without the advice to write the digits into it
    (tmp_path / "mine/train/cat").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        scan(tmp_path / "mine")
    assert str(e.value) == (f"data folder '{tmp_path / 'mine'}' has no val/ folder: an ImageFolder root holds "
                            f"train/<class>/<image> and val/<class>/<image>, the same classes in both (hold out a "
                            f"share of each class's images as val/).")
    make_jpeg_tree(tmp_path / "d", classes=2, per_class={"train": 2, "val": 1})
    one = make_jpeg_tree(tmp_path / "one", classes=1, per_class={"train": 2, "val": 1})
    with pytest.raises(DataError, match=r"train' has one class folder \(c0\); a classifier needs two or more"):
        scan(one)  # it trained to 100% with a loss of 0
    (tmp_path / "d/train/c9").mkdir()
    with pytest.raises(DataError, match=r"class folder .*c9' has no images"):
        scan(tmp_path / "d")


def test_scan_counts_and_class_mismatch(tmp_path):
    root = make_jpeg_tree(tmp_path / "d", classes=3, per_class={"train": 4, "val": 2})
    train, val = scan(root)
    assert train.classes == ("c0", "c1", "c2") and len(train) == 12 and len(val) == 6
    assert sorted(set(train.labels)) == [0, 1, 2]
    (root / "val/c2").rename(root / "val/c7")
    with pytest.raises(DataError, match="differ from the training split"):
        scan(root)


def test_scan_takes_file_types_from_the_folder_listing(tmp_path, monkeypatch):
    # What counts: image files by extension, any case; not folders named like images, other files, hidden files
    # (macOS's "._" twins), hidden or plain-file "classes". A symlinked class folder is followed. And no stat per
    # file (os.scandir's d_type): on a parallel file system each one is a metadata round trip, 1.28M of them for
    # ImageNet.
    root = make_jpeg_tree(tmp_path / "d", classes=2, per_class={"train": 2, "val": 1})
    (root / "train/c0/extra.JPEG").write_bytes((root / "train/c0/img_0_000.jpg").read_bytes())
    (root / "train/c0/notes.txt").write_text("not an image")
    (root / "train/c0/._img_0_000.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # macOS's AppleDouble file
    (root / "train/c0/nested.jpg").mkdir()
    (root / "train/.cache").mkdir()
    (root / "train/README.jpg").write_text("a file, not a class")
    (root / "val/c1").rename(tmp_path / "elsewhere")
    (root / "val/c1").symlink_to(tmp_path / "elsewhere")
    stats = []
    real_stat = os.stat

    def counted(path, *args, **kwargs):
        stats.append(Path(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted)
    train, val = scan(root)
    assert train.files == ("c0/extra.JPEG", "c0/img_0_000.jpg", "c0/img_0_001.jpg", "c1/img_1_000.jpg",
                           "c1/img_1_001.jpg")
    assert train.labels == (0, 0, 0, 1, 1)
    assert val.classes == ("c0", "c1") and val.files == ("c0/img_0_000.jpg", "c1/img_1_000.jpg")
    assert stats and not [p for p in stats if p.parent.parent in (root / "train", root / "val")]


def test_a_folder_the_user_cannot_read_is_one_line(tmp_path, monkeypatch):
    # (This runs as root, which reads every folder: the EACCES a cluster user meets is raised by hand.)
    import pathlib
    root = make_jpeg_tree(tmp_path / "d", classes=2, per_class={"train": 1, "val": 1})
    real = pathlib.Path.is_dir

    def is_dir(self):
        if self == root / "train":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "is_dir", is_dir)
    with pytest.raises(DataError, match=f"cannot read data folder '{root}': Permission denied "
                                        f"\\(at {root / 'train'}\\). Make it readable"):
        scan(root)


def test_too_few_images_for_workers_times_batch():
    with pytest.raises(DataError, match=r"fewer than workers x batch = 4 x 32.*at most 2"):
        check_size(10, 4, 32, "training split 'x'")


def test_photos_are_the_same_whatever_the_number_of_writers(tmp_path):
    from hvdfast.data import photos
    one, two = tmp_path / "one", tmp_path / "two"
    assert photos.write(one, images=12, val=3, workers=1) == {"train": 12, "val": 3}
    photos.write(two, images=12, val=3, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*.jpg"))
    assert len(files) == 15
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.jpg"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert len({(one / f).read_bytes() for f in files}) == 15  # every image its own crop


def test_pack_writes_into_a_new_folder_or_over_the_same_layout(tmp_path):
    """Shards packed into an ImageFolder hid it (its train/meta.json made it a packed set), and a pack over an older
    one of smaller shards left the older extra shards beside the new ones."""
    from hvdfast.data.pack import pack
    root = make_jpeg_tree(tmp_path / "d", classes=2, per_class={"train": 5, "val": 2})
    dst = tmp_path / "packed"
    first = pack(root, dst, shard_size=4)
    assert pack(root, dst, shard_size=4) == first == {"train": {"samples": 10, "shards": 3},
                                                       "val": {"samples": 4, "shards": 1}}
    with pytest.raises(DataError, match=r"already holds files that are not this data set's \(e.g. "
                                        r"train/shard-00002.idx\)"):
        pack(root, dst, shard_size=8)
    with pytest.raises(DataError, match=r"already holds files that are not this data set's \(e.g. train/c0/"):
        pack(root, root, shard_size=4)
    assert not (root / "train/meta.json").exists()
