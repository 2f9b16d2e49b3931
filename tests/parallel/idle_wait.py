"""Horovod's background thread under hvdfast's idle wait (launch/install.sh, "the background thread's idle wait"):
a warm-up allreduce, one second with nothing queued on any rank, then allreduces that rank 1 enqueues 0.1 s after
rank 0 (rank 0 waits in the round for it), then hvd.shutdown(). Each rank writes its sums and how long each call
took to OUT/rankR.json; the test reads rank 0's Horovod timeline (HOROVOD_TIMELINE_MARK_CYCLES) for the rounds."""
import json
import sys
import time
from pathlib import Path

import torch
import horovod.torch as hvd

out = Path(sys.argv[1])
hvd.init()
rank, size = hvd.rank(), hvd.size()
hvd.allreduce(torch.ones(4), op=hvd.Sum, name="warm")
time.sleep(1.0)  # idle: nothing queued anywhere
sums, calls_s = [], []
for i in range(5):
    time.sleep(0.2 + 0.1 * rank)
    t0 = time.perf_counter()
    sums.append(hvd.allreduce(torch.full((4,), float(rank + i)), op=hvd.Sum, name=f"a{i}").tolist())
    calls_s.append(time.perf_counter() - t0)
t0 = time.perf_counter()
hvd.shutdown()
shutdown_s = time.perf_counter() - t0
(out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "size": size, "sums": sums, "calls_s": calls_s,
                                                  "shutdown_s": shutdown_s}))
