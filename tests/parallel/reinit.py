"""hvd.init() -> allreduce -> hvd.shutdown(), three times in one process, with the Horovod knobs the digits
recipe sets (as an elastic reset does in every surviving worker); each rank writes its sums to OUT/rankR.json."""
import json
import os
import sys
from pathlib import Path

import torch

from hvdfast import config
from hvdfast.dist import core

out = Path(sys.argv[1])
env = core.horovod_env(config.load(Path(__file__).parents[2] / "launch/configs/digits-cpu.yaml").horovod)
os.environ.update(env)
import horovod.torch as hvd  # noqa: E402

sums = []
for round_ in range(3):
    hvd.init()
    sums.append(hvd.allreduce(torch.full((4,), float(hvd.rank() + round_)), op=hvd.Sum, name=f"r{round_}").tolist())
    rank, size = hvd.rank(), hvd.size()
    hvd.shutdown()
(out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "size": size, "sums": sums, "env": env}))
from hvdfast.process import lighten_exit  # noqa: E402
lighten_exit()  # the process ends here: no exit-time GC over torch's objects
