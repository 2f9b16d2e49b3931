"""Horovod's own Ray integration (horovod.ray.RayExecutor) on a local Ray instance on loopback: `hvdfast launch ray`
trains the digits recipe with 2 workers, and a bad override fails in one line."""
import json
import subprocess

import pytest

from conftest import ROOT, hvdfast_cmd, launcher_env

pytest.importorskip("ray", reason="Ray is not installed (pip install 'hvdfast[ray]'; part of hvdfast[test])")


def test_ray_executor_trains_digits_on_two_workers(digits_dir, tmp_path):
    run = tmp_path / "run"
    p = subprocess.run(hvdfast_cmd("launch", "ray", "--config", "launch/configs/digits-cpu.yaml", "--np", "2",
                                   f"data.dir={digits_dir}", "train.epochs=1", "train.threads=1",
                                   f"train.run_dir={run}", "train.progress=lines", "train.resume=never"),
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=launcher_env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ray: 2 Horovod workers finished" in p.stdout and "identical on every worker" in p.stdout
    summary = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["kind"] == "summary" and summary["workers"] == 2 and summary["steps"] == 23
    assert summary["ranks_agree"]


def test_ray_worker_error_is_one_line(tmp_path):
    p = subprocess.run(hvdfast_cmd("launch", "ray", "--config", "launch/configs/digits-cpu.yaml", "--np", "2",
                                   f"data.dir={tmp_path / 'nowhere'}", "train.progress=lines"),
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=launcher_env())
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("hvdfast launch ray:")]
    assert len(errors) == 1 and "nowhere" in errors[0], p.stderr[-2000:]
