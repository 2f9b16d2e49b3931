"""Started by the launcher from tests/test_matrix.py: one cell of the combination matrix and its references, each a
short `hvdfast train` run (train.run, the CLI's own path) in the same ranks, one after the other.

argv: OUT DATA_DIR RUNS_JSON, where RUNS_JSON maps a run's name to its overrides. Each rank writes
OUT/rank<r>.json: per run, its parameter digest and summary; rank 0 also the digest of the model its best.pt
(train.keep_best) loads into through models.from_best, the README's way (None on the other ranks).

The run named "accumulation" is not a training run: with the cell's optimizer, Horovod settings and clipping (in
fp32; under the cell's loss scaler with fp16 precision) it drives engine.train_epoch through dist.wrap_optimizer
twice, with 2 micro-batches of 16 and with 1 batch of 32, on a small convolutional net without BatchNorm
(BatchNorm normalises over the micro-batch, so with it the two are different maths), and records how far apart
the parameters end, relative to how far they moved.
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from hvdfast import dist, engine, models, optim, train, tuned

RECIPE = Path(__file__).resolve().parents[2] / "launch/configs/digits-cpu.yaml"


def accumulation(cfg) -> dict:
    info = dist.init(cfg.horovod, threads=cfg.train.threads)
    prec = engine.precision_for("fp32", info.device)  # bf16 rounds activations: LAMB's first, sign-like steps
    # turned that rounding into 4e-2 differences (measured); in fp32 the two end 1e-6 apart
    if cfg.train.precision == "fp16":  # fp16's loss scaler over fp32 arithmetic: scaled by a power of two, exactly
        prec = dataclasses.replace(prec, scaler=engine.precision_for("fp16", info.device).scaler)
    g = torch.Generator().manual_seed(100 + info.rank)  # each rank its own data, as shards are
    x, y = torch.randn(96, 3, 16, 16, generator=g), torch.randint(0, 10, (96,), generator=g)
    final = {}
    for accum, batch in ((2, 16), (1, 32)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                    torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                                    torch.nn.Linear(32, 10))
        dist.broadcast_model(model)
        start = torch.cat([p.detach().double().flatten() for p in model.parameters()])
        hcfg = dataclasses.replace(cfg.horovod, backward_passes_per_step=accum)
        opt = dist.wrap_optimizer(optim.build(model, cfg.optim), model, hcfg)
        engine.train_epoch(model, opt, [(x[i:i + batch], y[i:i + batch]) for i in range(0, 96, batch)], steps=3,
                           first_step=0, lr_fn=lambda step: 0.05, criterion=torch.nn.CrossEntropyLoss(), prec=prec,
                           accumulation=accum, loss_divisor=dist.loss_divisor(hcfg),
                           clip_grad_norm=cfg.optim.clip_grad_norm, log_every=3)
        final[accum] = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    moved = float((final[1] - start).abs().max())
    return {"params": train.param_digest(model), "rank": info.rank, "moved": moved,
            "apart": float((final[2] - final[1]).abs().max()) / moved}


def main(out: Path, data_dir: str, runs: dict) -> None:
    result, rank = {}, 0
    for name, overrides in runs.items():
        cfg, notes = tuned.load_config(RECIPE, [f"data.dir={data_dir}", f"train.run_dir={out / name}",
                                                *overrides])
        if name == "accumulation":
            result[name] = accumulation(cfg)
            continue
        summary = train.run(cfg, notes)
        rank = summary["rank"]
        best = out / name / "best.pt"
        result[name] = {"params": train.param_digest(summary["model"]),
                        "best_params": train.param_digest(models.from_best(best)[0]) if rank == 0 else None,
                        **{k: summary[k] for k in ("steps", "global_batch", "final_top1", "ranks_agree")}}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
    from hvdfast.process import lighten_exit
    lighten_exit()  # the process ends here: no exit-time GC over torch's objects
