"""`hvdfast train`: the training pipeline's steps, top to bottom (hvdfast/run/ holds each step).

Every rank runs this same function; only rank 0 writes files and prints (through Reporter).
"""
from __future__ import annotations

import time

from . import config
from .metrics import Reporter
from .run import resume, summary
from .run.fit import TrainingError, fit  # noqa: F401  (TrainingError: cli reports it as a user error)
from .run.setup import setup
from .run.summary import consistency, param_digest  # noqa: F401  (used by tests and bench)
from .watchdog import Watchdog


def run(cfg: config.Config, notes=()) -> dict:
    if cfg.train.elastic:
        from . import elastic
        return elastic.run(cfg, notes)
    # 1. config -> dist -> data -> model -> optimizer -> Horovod wrapper
    job = setup(cfg, notes)
    # 2. resume: this run's newest checkpoint, if there is one (refused when it belongs to another run)
    st, path = resume.resume(job)
    # 3. fit, with the run's files and log next to it
    summary.write_run_files(job)
    rep = Reporter(job.run_dir, job.plan.info.is_main, cfg.train.progress, job.plan.total_steps)
    summary.announce(job, st, rep, path)
    wd = Watchdog(job.run_dir, job.plan.info.rank, job.plan.info.size, cfg.train.hang_timeout_s)
    st.t_start = time.perf_counter() - st.trained_s
    fit(job, st, rep, wd)
    wd.stop()
    # 4. summarize: ranks agree?, accuracy and throughput
    out = summary.summarize(job, st, rep)
    rep.close()
    return {**out, "model": job.model, "rank": job.plan.info.rank}
