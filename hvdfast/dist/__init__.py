"""The one door to Horovod. `core` holds the process group (init, DistInfo, collectives, elastic) and is the only
module in hvdfast that imports horovod.torch; `optimizer` wraps the user's optimizer (Horovod's
DistributedOptimizer, or `buckets` with a `compression` / `powersgd` reducer). Imports inside the package run one
way (core <- buckets <- optimizer), so the package has no cycle; everything outside it imports `hvdfast.dist`.
"""
from .core import (DeviceError, DistInfo, allgather_object, allreduce_async_, allreduce_mean, allreduce_sum,  # noqa
                   average_buffers, barrier, broadcast_, broadcast_model, broadcast_object, build_info,
                   controller_problem, cores_owned, current, elastic_run, gpu_problem, horovod_env, init, peer_lost,
                   poll, shutdown, synchronize, threads_note)
from .optimizer import (elastic_state, forget_step, init_optimizer_state, loss_divisor, rejoin,  # noqa: F401
                        wrap_optimizer)
