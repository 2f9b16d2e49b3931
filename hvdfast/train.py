"""`hvdfast train`: the training pipeline's steps, top to bottom (hvdfast/run/ holds each step).

Every rank runs this same function; only rank 0 writes files and prints (through Reporter).
"""
from __future__ import annotations

from . import config
from .run import resume, stop, summary
from .run.fit import TrainingError, fit, memory_knobs, out_of_memory_in_one_line  # noqa: F401 (cli's error)
from .run.setup import setup
from .run.summary import consistency, param_digest  # noqa: F401  (used by tests and bench)


def process_start() -> float:
    """time.time() when this process started: train.max_time counts from there (imports and setup included)."""
    import psutil  # a Horovod dependency
    return psutil.Process().create_time()


def run(cfg: config.Config, notes=()) -> dict:
    with out_of_memory_in_one_line(*memory_knobs(cfg)):  # the same line from setup (data, model) as from training
        return _run(cfg, notes)


def _run(cfg: config.Config, notes) -> dict:
    # first, so that a scheduler's warning during setup is kept for the first step instead of killing the process
    vote = stop.StopVote(cfg.train.max_time, process_start()).install()
    if cfg.train.elastic:
        from . import elastic
        return elastic.run(cfg, notes, vote)
    # 1. config -> dist -> data -> model -> optimizer -> Horovod wrapper
    job = setup(cfg, notes)
    vote.size = job.plan.info.size
    # 2. resume: this run's newest checkpoint, if there is one (refused when it belongs to another run)
    st, path = resume.resume(job)
    # 3. fit, with the run's files and log next to it (the folder is this run's until it ends); 4. summarize:
    # ranks agree?, accuracy and throughput

    def body(out: summary.Outputs) -> None:
        out.rep.start(st.step, job.plan.global_batch, job.plan.info.size, str(path) if path else "fresh")
        fit(job, st, out.rep, out.wd, vote=vote)
    return summary.train_in_folder(job, st, path, body, cfg.train.progress)
