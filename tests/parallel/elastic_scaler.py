"""Started by horovodrun --gloo -np 2 from tests/test_elastic.py: the fp16 loss scaler in Horovod's elastic state
(dist.elastic_state), as a reset sees it. Rank 0's scaler has a survivor's history (3 overflows: the scale halved
three times; then 5 good steps counted towards its next growth); rank 1's is a joiner's, fresh. After the state
sync every rank must hold rank 0's; after a save, one more overflow and a restore, the saved one again (a worker
lost: the survivors roll back to the last commit). Each rank writes OUT/rank<r>.json with the states it saw."""
import json
import sys
from pathlib import Path

import torch

from hvdfast import dist

out = Path(sys.argv[1])
info = dist.init(threads=1)
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scaler = torch.amp.GradScaler("cpu")


def history(overflows: int, good: int) -> None:
    """Steps the loss scaler sees: `overflows` whose gradients hold an inf (skipped, the scale halves), then `good`."""
    for i in range(overflows + good):
        opt.zero_grad()
        scaler.scale(model(torch.ones(1, 4)).sum()).backward()
        if i < overflows:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()


def seen() -> dict:
    return {k: float(v) for k, v in scaler.state_dict().items()}


if info.rank == 0:
    history(3, 5)
before = seen()
state = dist.elastic_state(model, opt, scaler=scaler, images=0)
state.sync()  # Horovod: what every reset does, after the new world is formed
synced = seen()
state.save()
history(1, 0)
moved = seen()
state.restore()
(out / f"rank{info.rank}.json").write_text(json.dumps({"before": before, "synced": synced, "moved": moved,
                                                       "restored": seen()}))
from hvdfast.process import lighten_exit  # noqa: E402
lighten_exit()  # the process ends here: no exit-time GC over torch's objects
