"""Horovod's and Open MPI's environment knobs for a config: HOROVOD_* and OMPI_MCA_* variables, read by hvd.init()
(dist.init sets them in each rank) and exported to remote ranks by the launchers (hvdfast launch). Pure: importing
it costs neither torch nor horovod, so `hvdfast launch` starts its launcher at once (importing hvdfast.dist for
this function cost it 2.1 s of torch import before horovodrun started)."""
from __future__ import annotations

from .config import ConfigError, HorovodConfig

# Horovod's own variables that horovod_env always sets, with the config key each one carries and how its text reads
# as that key's value (horovodrun's --fusion-threshold-mb, --cycle-time-ms and --stall-check-warning-time-seconds
# set them for the workers; users export them as Horovod's docs say).
FROM_ENVIRONMENT = {
    "HOROVOD_FUSION_THRESHOLD": ("horovod.fusion_threshold_mb", lambda text: float(text) / (1024 * 1024)),
    "HOROVOD_CYCLE_TIME": ("horovod.cycle_time_ms", float),
    "HOROVOD_STALL_CHECK_TIME_SECONDS": ("horovod.stall_check_warning_s", lambda text: int(float(text))),
}


def horovod_env(cfg: HorovodConfig) -> dict:
    """Horovod's environment knobs for this config (read by hvd.init(); exported to remote ranks by launchers)."""
    fusion_mb = cfg.fusion_threshold_mb
    if cfg.bucket_mb > 0:
        # Gradient buckets are already the fusion: a threshold above a bucket's size would make Horovod copy two
        # buckets into its fusion buffer and back (measured: 42 ms instead of 17 ms for ResNet-50 here).
        fusion_mb = min(fusion_mb, cfg.bucket_mb / 2)
    env = {
        # Horovod: tensor fusion packs many small gradients into one buffer per allreduce.
        "HOROVOD_FUSION_THRESHOLD": str(int(fusion_mb * 1024 * 1024)),
        # Horovod: how often the background thread checks which tensors are ready on every rank.
        "HOROVOD_CYCLE_TIME": str(cfg.cycle_time_ms),
        "HOROVOD_STALL_CHECK_TIME_SECONDS": str(cfg.stall_check_warning_s),
        # Horovod (hvdfast's build patch): no coordination rounds while this rank has nothing queued; on CPU
        # workers those rounds took 3% of the compute they share cores with (launch/install.sh). Always set, 0
        # included (Horovod's own cycle), so a value inherited from the launching shell never overrides the config.
        "HVDFAST_IDLE_WAIT_MS": str(cfg.idle_wait_ms),
    }
    if cfg.stall_check_shutdown_s > 0:
        env["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = str(cfg.stall_check_shutdown_s)
    if cfg.timeline:
        env["HOROVOD_TIMELINE"] = cfg.timeline
    if cfg.hierarchical_allreduce:
        # Horovod: reduce inside each node over NCCL, across nodes over MPI (one inter-node hop per node).
        env["HOROVOD_HIERARCHICAL_ALLREDUCE"] = "1"
    if cfg.mpi_yield_when_idle:
        # Horovod (MPI controller): a spinning MPI progress loop steals the core its rank computes on. Unlike
        # Horovod's variables (FROM_ENVIRONMENT) this one is not read back as the user's choice: the launcher of
        # older Open MPI releases (ORTE's odls) itself sets it to 0 in every rank's environment on a node it did not
        # oversubscribe, which would switch the recipe's setting off unasked (4.1.4's mpirun, here, sets none).
        env["OMPI_MCA_mpi_yield_when_idle"] = "1"
    if cfg.mpi_allreduce != "auto":
        # Horovod (MPI operations): Horovod calls MPI_Allreduce; Open MPI's coll/tuned picks its algorithm unless
        # dynamic rules force one (only allreduce's: the other collectives keep Open MPI's fixed choices).
        env["OMPI_MCA_coll_tuned_use_dynamic_rules"] = "1"
        # the names are Open MPI's own (`ompi_info --param coll tuned --level 9 --parsable`: enumerator)
        env["OMPI_MCA_coll_tuned_allreduce_algorithm"] = cfg.mpi_allreduce
    if cfg.autotune:
        env["HOROVOD_AUTOTUNE"] = "1"
        if cfg.autotune_log:
            env["HOROVOD_AUTOTUNE_LOG"] = cfg.autotune_log
    return env


def set_in_environment(environ, cfg: HorovodConfig) -> dict:
    """{config key: (value, variable)} for Horovod's variables in `environ` that say something else than this config
    would export. A launcher that exported the config's own values (hvdfast launch) shows none of them."""
    mine = horovod_env(cfg)
    found = {}
    for var, (key, parse) in FROM_ENVIRONMENT.items():
        text = environ.get(var)
        if text is None or text.strip() == mine[var]:
            continue
        try:
            value = parse(text)
        except ValueError:
            raise ConfigError(f"{var}={text!r} in the environment is not a number; unset it, or set {key} "
                              f"instead.") from None
        if value != getattr(cfg, key.split(".")[1]):
            found[key] = (value, var)
    return found
