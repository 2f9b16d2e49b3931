"""Started by horovodrun from tests/test_data_parallel.py: validation over 2 ranks vs one rank alone.

A short training run gives non-trivial weights; then each backend's sharded validation is reduced across ranks,
and rank 0 evaluates the same weights on the whole validation split by itself.
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from hvdfast import config, data, dist, engine, train


def main(out: Path, data_dir: str) -> None:
    base = [f"data.dir={data_dir}", "model.name=resnet18", "data.image_size=32", "data.val_resize=32",
            "data.batch_size=16", "train.progress=lines", "train.resume=never", f"train.run_dir={out / 'run'}",
            "train.checkpoint_every=0", "train.target_top1=0"]
    cfg = config.load(Path(__file__).resolve().parents[2] / "launch/configs/digits-cpu.yaml",
                      base + ["data.backend=torchvision", "train.epochs=1"])
    model = train.run(cfg)["model"]
    fp32 = engine.precision_for("fp32", torch.device("cpu"))
    crit = torch.nn.CrossEntropyLoss()
    info = dist.init(cfg.horovod)
    res = {}
    for backend in ("dali", "torchvision"):
        bcfg = config.replace(cfg, "data.backend", backend)
        sharded = data.build(bcfg, info).val
        both = dist.allreduce_sum(engine.evaluate(model, sharded.epoch(0), fp32, crit), name=f"ev.{backend}")
        alone_info = dataclasses.replace(info, rank=0, size=1)
        alone = engine.evaluate(model, data.build(bcfg, alone_info).val.epoch(0), fp32, crit)
        res[backend] = {"two_ranks": both.tolist(), "one_rank": alone.tolist()}
    (out / f"rank{info.rank}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
    from hvdfast.process import lighten_exit
    lighten_exit()  # the process ends here: no exit-time GC over torch's objects
