"""Started by horovodrun from tests/test_train_parallel.py: short digits trainings, one per compression.

Each rank writes OUT/rank<r>.json with a hash of its final parameters per compression; rank 0's run directories
hold metrics.jsonl. The pytest side asserts the ranks agree bit for bit and that the loss fell.
"""
import json
import sys
from pathlib import Path

from hvdfast import config, train


def main(out: Path, data_dir: str, compressions: list[str], extra: list[str]) -> None:
    result = {}
    for c in compressions:
        cfg = config.load(Path(__file__).resolve().parents[2] / "launch/configs/digits-cpu.yaml", [
            f"data.dir={data_dir}", "data.backend=torchvision", "model.name=resnet18", "data.image_size=32",
            "data.val_resize=32", "data.batch_size=16", "train.epochs=2", "train.log_every=5",
            f"horovod.compression={c}", f"train.run_dir={out / c}", "train.progress=lines",
            "train.resume=never", "train.target_top1=0", *extra])
        summary = train.run(cfg)
        result[c] = {"params": train.param_digest(summary["model"]), "best_top1": summary["best_top1"]}
        rank = summary["rank"]
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4:])
    from hvdfast.process import lighten_exit
    lighten_exit()  # the process ends here: no exit-time GC over torch's objects
