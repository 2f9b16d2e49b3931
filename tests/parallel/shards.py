"""Started by horovodrun from tests/test_data_parallel.py: which images each rank sees in one epoch.

Labels are replaced by each file's index, so the labels a backend yields identify the images themselves.
"""
import dataclasses
import json
import sys
from pathlib import Path

from hvdfast import config, data, dist
from hvdfast.data.folder import scan


def main(out: Path, data_dir: str, backend: str, batch: int) -> None:
    cfg = config.load(None, [f"data.dir={data_dir}", f"data.backend={backend}", f"data.batch_size={batch}",
                             "data.image_size=32", "data.val_resize=32", "data.workers=0"])
    info = dist.init(cfg.horovod)
    train, val = scan(data_dir)
    ids = lambda s: dataclasses.replace(s, labels=tuple(range(len(s))))  # noqa: E731
    if backend == "dali":
        from hvdfast.data import dali
        tl, vl = dali.build(cfg, info, ids(train), ids(val), threads=1)
    else:
        from hvdfast.data import torchvision as tv
        tl, vl = tv.build(cfg, info, ids(train), ids(val), workers=0)
    res = {"rank": info.rank, "steps_per_epoch": tl.steps_per_epoch, "n_train": len(train), "n_val": len(val)}
    res["train"] = [[int(i) for i in y.tolist()] for _, y in tl.epoch(0)]
    res["train_epoch1"] = [int(i) for _, y in tl.epoch(1) for i in y.tolist()]
    res["val"] = [int(i) for _, y in vl.epoch(0) for i in y.tolist()]
    res["resolved_backend"] = data.resolve_backend(backend)
    (out / f"rank{info.rank}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
