"""Started by horovodrun from tests/test_data_parallel.py: the ImageFolder listed by rank 0 alone.

On every rank but 0 the folder's own scan is replaced by one that fails, so a rank that lists the folder itself
(instead of taking rank 0's listing) fails, and a problem rank 0 met arrives as rank 0's message. Each rank writes
what it got to OUT/rank<r>.json.
"""
import json
import sys
from pathlib import Path

from hvdfast import config, data, dist


def listed(data_dir: str, info) -> dict:
    try:
        train, val = data.scan_once(data_dir, info)
    except data.DataError as exc:
        return {"error": str(exc)}
    return {split.root.name: {"root": str(split.root), "classes": list(split.classes), "files": list(split.files),
                              "labels": list(split.labels)} for split in (train, val)}


def main(out: Path, data_dir: str, missing_dir: str) -> None:
    info = dist.init(config.load(None, []).horovod)
    if info.rank != 0:
        def not_here(path):
            raise data.DataError(f"rank {info.rank} listed {path} itself")
        data.scan = not_here  # what scan_once calls
    res = {"rank": info.rank, "tree": listed(data_dir, info), "missing": listed(missing_dir, info)}
    (out / f"rank{info.rank}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    from hvdfast.process import lighten_exit
    lighten_exit()
