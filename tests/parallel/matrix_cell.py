"""Started by the launcher from tests/test_matrix.py: one cell of the combination matrix and its references, each a
short `hvdfast train` run (train.run, the CLI's own path) in the same ranks, one after the other.

argv: OUT DATA_DIR RUNS_JSON, where RUNS_JSON maps a run's name to its overrides. Each rank writes
OUT/rank<r>.json: per run, its parameter digest and summary; rank 0 also saves every run's final parameters as one
flat float64 tensor (OUT/<name>.pt) for the comparisons that hold to a tolerance rather than bit for bit.
"""
import json
import sys
from pathlib import Path

import torch

from hvdfast import train, tuned

RECIPE = Path(__file__).resolve().parents[2] / "launch/configs/digits-cpu.yaml"


def main(out: Path, data_dir: str, runs: dict) -> None:
    result, rank = {}, 0
    for name, overrides in runs.items():
        cfg, notes = tuned.load_config(RECIPE, [f"data.dir={data_dir}", f"train.run_dir={out / name}",
                                                *overrides])
        summary = train.run(cfg, notes)
        rank = summary["rank"]
        result[name] = {"params": train.param_digest(summary["model"]),
                        **{k: summary[k] for k in ("steps", "global_batch", "final_top1", "ranks_agree")}}
        if rank == 0:
            flat = torch.cat([p.detach().double().flatten() for p in summary["model"].parameters()])
            torch.save(flat, out / f"{name}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
