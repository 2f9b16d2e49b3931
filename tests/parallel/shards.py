"""Started by horovodrun from tests/test_data_parallel.py: which images each rank sees in one epoch.

The data set has one image per class, so the labels a backend yields identify the images themselves.
"""
import json
import sys
from pathlib import Path

from hvdfast import config, data, dist


def main(out: Path, data_dir: str, backend: str, batch: int) -> None:
    cfg = config.load(None, [f"data.dir={data_dir}", f"data.backend={backend}", f"data.batch_size={batch}",
                             "data.image_size=32", "data.val_resize=32", "data.workers=0"])
    info = dist.init(cfg.horovod)
    d = data.build(cfg, info)
    res = {"rank": info.rank, "steps_per_epoch": d.train.steps_per_epoch, "n_train": d.train.images,
           "n_val": d.val.images, "backend": d.backend}
    res["train"] = [[int(i) for i in y.tolist()] for _, y in d.train.epoch(0)]
    res["train_epoch1"] = [int(i) for _, y in d.train.epoch(1) for i in y.tolist()]
    res["val"] = [int(i) for _, y in d.val.epoch(0) for i in y.tolist()]
    (out / f"rank{info.rank}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
    from hvdfast.process import lighten_exit
    lighten_exit()  # the process ends here: no exit-time GC over torch's objects
