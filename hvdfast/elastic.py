"""`hvdfast train train.elastic=true`: Horovod elastic training, launched by
`horovodrun -np N --min-np A --max-np B --host-discovery-script SCRIPT hvdfast train ...`.

The same pipeline as `hvdfast train` (run/: setup, resume, fit, summary) inside Horovod's elastic loop; what
differs is only what Horovod's elastic state wraps. Training continues with the surviving workers when one dies,
and takes new or returning workers in when the discovery script reports them (or a blacklisted host's cooldown
ends). Two Horovod 0.28.1 traps on scale-up are avoided in dist: the response cache is off in elastic runs (a warm
cache on survivors and a cold one on the joiner made their first collectives disagree, and Gloo aborted), and the
optimizer state exists before the state sync (on an empty state Horovod steps the optimizer with zero gradients
after the weight broadcast, and weight decay then moved the joiner's weights away from everyone else's).

The state that survives a reset is Horovod's TorchState (model, optimizer, fp16 loss scaler, images seen),
committed in memory every `train.checkpoint_every_steps` steps (default 10 here); after each reset the data
shards, the global batch and the LR schedule are rebuilt for the new world size (run.setup.plan), and the schedule
position is kept in images seen.
Horovod's elastic state sync broadcasts tensors as they are, and Horovod refuses NHWC-strided ones, so an elastic
run keeps the model in NCHW (setup says so in the log).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import config, dist
from .metrics import Reporter
from .run import resume, stop, summary
from .run.fit import FitState, fit
from .run.setup import Job, plan, setup
from .watchdog import Watchdog


@dataclass
class ElasticRun:
    job: Job
    st: FitState
    state: object        # Horovod's TorchState: model, optimizer, loss scaler, images (seen, all workers)
    out: summary.Outputs  # the Reporter and Watchdog, replaced here at a reset (train_in_folder closes the last)
    commit_every: int    # optimizer steps between in-memory commits
    vote: stop.StopVote  # the stop agreement (its vote in flight died with the old Horovod at a reset)
    source: str          # where training goes on from: 'fresh' or a checkpoint, then 'elastic reset'

    def on_reset(self) -> None:
        """After workers came or went: rebuild what the world size decides, and the rank-0 outputs."""
        cfg, old = self.job.cfg, self.job.plan
        dist.forget_step(self.job.opt)  # a worker may have died mid-step: its allreduces and partial grads go
        for loader in (old.data.train, old.data.val):
            getattr(loader, "close", lambda: None)()
        self.job.plan = plan(cfg, dist.current(), collectives=False)  # a joining worker is not in this callback
        info = self.job.plan.info
        self.vote.size = info.size
        self.vote.forget()
        if self.out.rep.enabled != info.is_main:  # another worker may be rank 0 now
            self.out.rep.close()
            self.out.rep = Reporter(self.job.run_dir, info.is_main, "lines", self.job.plan.total_steps,
                                    cfg.train.resume)
        if info.is_main and (problem := summary.take_over(self.job)):
            self.out.rep.line(f"WARNING: {problem}")
        self.out.wd.stop()
        self.out.wd = Watchdog(self.job.run_dir, info.rank, info.size, cfg.train.hang_timeout_s, cfg.train.resume)
        self.announce_world()

    def announce_world(self) -> None:
        p = self.job.plan
        self.out.rep.line(f"elastic: {p.info.size} worker(s), global batch {p.global_batch}, "
                          f"{p.steps_per_epoch} steps/epoch")

    def after_step(self, step: int) -> None:
        self.state.images += self.job.plan.global_batch
        if step % self.commit_every == 0:
            self.state.commit()  # Horovod: in-memory snapshot + check for added / removed hosts

    def train(self, state) -> None:
        # Horovod: after a reset `state` holds the last commit; the run goes on from the images it had seen.
        p = self.job.plan
        self.st.step = state.images // p.global_batch
        self.out.rep.start(self.st.step, p.global_batch, p.info.size, self.source)  # what came after: superseded
        self.source = "elastic reset"
        dist.rejoin(self.job.opt, p.info.size)  # every rank of the new world, joiners included
        fit(self.job, self.st, self.out.rep, self.out.wd, self.after_step, self.vote)
        state.commit()


def run(cfg: config.Config, notes, vote: stop.StopVote) -> dict:
    if os.environ.get("HOROVOD_ELASTIC") != "1":  # set by horovodrun's elastic driver in every worker
        notes = [*notes, "elastic: not started by horovodrun's elastic driver (--min-np, --max-np, "
                         "--host-discovery-script; `hvdfast launch local|hosts` writes them), so these workers are "
                         "fixed: a lost one ends the run"]
    job = setup(cfg, notes, elastic=True)
    vote.size = job.plan.info.size
    st, path = resume.resume(job, broadcast=False)  # no collective before Horovod's state sync

    def body(out: summary.Outputs) -> None:
        er = ElasticRun(job=job, st=st, out=out, commit_every=cfg.train.checkpoint_every_steps or 10, vote=vote,
                        state=dist.elastic_state(job.model, job.opt, job.prec.scaler,
                                                images=st.step * job.plan.global_batch),
                        source=str(path) if path else "fresh")
        er.announce_world()
        er.state.register_reset_callbacks([er.on_reset])
        dist.elastic_run(er.train)(er.state)
    # plain log lines, as from the Reporter each reset makes (on_reset)
    return summary.train_in_folder(job, st, path, body, "lines", agree=False)
