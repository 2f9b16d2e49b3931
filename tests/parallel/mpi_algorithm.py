"""Started by mpirun from tests/test_parallel.py: one rank of the `horovod.mpi_allreduce` check.

dist.init with the algorithm asked for (it reaches Open MPI through the environment hvd.init() starts MPI with),
then Horovod sums seeded tensors of two sizes: 26.2 MB, where Open MPI's own choice at 2 ranks is Rabenseifner's
algorithm, and 4 KB. Writes OUT/rank<r>.json: the MCA variables it ran with and whether each sum equals, bit for
bit, the sum this rank computes itself from both ranks' seeded tensors (with 2 ranks every algorithm adds the same
two numbers).
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from hvdfast import dist
from hvdfast.config import HorovodConfig


def tensors(rank: int) -> list:
    g = torch.Generator().manual_seed(1000 + rank)
    return [torch.randn(6_553_600, generator=g), torch.randn(1024, generator=g)]


def main(out: Path, algorithm: str) -> None:
    info = dist.init(HorovodConfig(mpi_allreduce=algorithm), pin_threads=False)
    mine, other = tensors(info.rank), tensors(1 - info.rank)
    exact, digest = [], hashlib.sha256()
    for i, (t, o) in enumerate(zip(mine, other)):
        want = t + o if info.rank == 0 else o + t
        got = dist.synchronize(dist.allreduce_async_(t.clone(), name=f"algo.{i}", op="sum"))
        exact.append(bool(torch.equal(got, want)))
        digest.update(got.numpy().tobytes())
    mca = {k: v for k, v in os.environ.items() if k.startswith("OMPI_MCA_coll_tuned")}
    (out / f"rank{info.rank}.json").write_text(json.dumps({"mca": mca, "exact": exact, "digest": digest.hexdigest(),
                                                           "controller": info.controller}))
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
    from hvdfast.process import lighten_exit
    lighten_exit()  # the process ends here: no exit-time GC over torch's objects
