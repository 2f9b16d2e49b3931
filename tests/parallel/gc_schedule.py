"""Started by mpirun from tests/test_gc.py: a short digits training that counts the garbage collections Python
runs while hvdfast's collection schedule is in force (gc.freeze() is only in effect inside it).

Each rank writes OUT/rank<r>.json: the optimizer steps, the collections seen inside the schedule by generation,
and the collector's state after the run.
"""
import gc
import json
import sys
from pathlib import Path

from hvdfast import config, train


def main(out: Path, data_dir: str, every: int) -> None:
    inside: dict[int, int] = {}

    def seen(phase: str, info: dict) -> None:
        if phase == "start" and gc.get_freeze_count() > 0:
            inside[info["generation"]] = inside.get(info["generation"], 0) + 1

    gc.callbacks.append(seen)
    cfg = config.load(Path(__file__).resolve().parents[2] / "launch/configs/digits-cpu.yaml", [
        f"data.dir={data_dir}", "data.backend=torchvision", "model.name=resnet18", "data.image_size=32",
        "data.val_resize=32", "data.batch_size=16", "train.epochs=0.2", "train.log_every=5",
        f"train.gc_every={every}", f"train.run_dir={out / 'run'}", "train.progress=lines", "train.resume=never",
        "train.target_top1=0", "data.workers=0"])
    summary = train.run(cfg)
    gc.callbacks.remove(seen)
    (out / f"rank{summary['rank']}.json").write_text(json.dumps(
        {"steps": summary["steps"], "inside": inside, "enabled_after": gc.isenabled(),
         "frozen_after": gc.get_freeze_count()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    from hvdfast.process import lighten_exit
    lighten_exit()  # the process ends here: no exit-time GC over torch's objects
