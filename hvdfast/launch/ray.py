"""`hvdfast launch ray`: Horovod's own Ray integration (RayExecutor) runs the training on a Ray cluster, or on a
local Ray instance on loopback."""
from __future__ import annotations

import logging
import os
import sys

from .. import config, tuned
from .job import knobs, resolved


def _ray_train(cwd: str, config_path: str | None, overrides: list[str]) -> dict:
    """Runs inside each Ray worker (after RayExecutor set up Horovod's rendezvous), in the launcher's folder as
    horovodrun's ranks are, so relative data and run paths mean the same."""
    from .. import train
    from ..checkpoint import CheckpointError
    from ..data.folder import DataError
    os.chdir(cwd)
    try:
        summary = train.run(*tuned.load_config(config_path, overrides))
    except (config.ConfigError, DataError, CheckpointError, train.TrainingError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}  # every worker meets it; the driver says it once
    return {k: v for k, v in summary.items() if k != "model"}


def run_ray(args) -> int:
    """Horovod's own Ray integration: RayExecutor places the workers, Horovod's Gloo rendezvous connects them."""
    try:
        import ray
        from horovod.ray import RayExecutor
    except ImportError as exc:
        raise config.ConfigError(f"launch ray needs Ray ({exc}); pip install 'hvdfast[ray]'.") from None
    resolved(args)  # a typo fails here, before any worker starts
    # horovod.ray 0.28.1 calls a Ray API that Ray deprecates: one warning per worker, nothing broken.
    quiet = {"runtime_env": {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}},
             "logging_level": logging.ERROR}
    if args.ray_address:
        ray.init(address=args.ray_address, **quiet)
    else:  # a local Ray instance on loopback, sized to the job
        ray.init(num_cpus=args.np * args.cpus_per_worker, num_gpus=args.np if args.ray_gpus else 0,
                 include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    try:
        ex = RayExecutor(RayExecutor.create_settings(timeout_s=120), num_workers=args.np,
                         cpus_per_worker=args.cpus_per_worker, use_gpu=args.ray_gpus,
                         gpus_per_worker=1 if args.ray_gpus else None)
        ex.start(extra_env_vars={k: str(v) for k, v in knobs(args).items()})
        try:
            results = ex.run(_ray_train, args=[os.getcwd(), args.config, list(args.overrides)])
        finally:
            ex.shutdown()
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        print(f"hvdfast launch ray: a worker failed: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        print(f"hvdfast launch ray: a worker failed: {failed[0]}", file=sys.stderr)
        return 2
    agree = len({r["params_sha256"] for r in results}) == 1
    print(f"ray: {len(results)} Horovod workers finished (best top-1 {results[0]['best_top1']:.2f}%); "
          f"final parameters {'identical on every worker' if agree else 'DIFFER between workers'}", flush=True)
    return 0 if agree else 1
