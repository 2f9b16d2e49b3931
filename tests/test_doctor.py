import json
import subprocess
import sys

from conftest import ROOT, hvdfast_cmd, launcher_env


def test_doctor_reports_the_built_stack():
    p = subprocess.run(hvdfast_cmd("doctor", "--json"), capture_output=True, text=True, timeout=120,
                       env=launcher_env())
    out = json.loads(p.stdout)
    rep = out["report"]
    assert rep["horovod"]["version"] == "0.28.1"
    assert rep["horovod"]["frameworks"]["pytorch"]
    assert rep["horovod"]["controllers"]["gloo"]
    assert rep["torch"] and rep["torchvision"] and rep["cpu_cores"] >= 1
    assert p.returncode == (1 if out["problems"] else 0)
    human = subprocess.run(hvdfast_cmd("doctor"), capture_output=True, text=True, timeout=120, env=launcher_env())
    assert "controllers:" in human.stdout and "GLOO [X]" in human.stdout


def _doctor_without(module: str):
    """Run doctor in a Python where `module` cannot be imported (as on a machine without it)."""
    code = (f"import sys; sys.modules[{module!r}] = None; "
            "from hvdfast.cli import main; sys.exit(main(['doctor']))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=launcher_env(), cwd=ROOT)


def test_doctor_names_missing_horovod_with_a_remedy():
    p = _doctor_without("horovod")
    assert p.returncode == 1
    assert "Horovod is not installed" in p.stdout and "launch/install.sh" in p.stdout


def test_doctor_names_horovod_without_pytorch():
    p = _doctor_without("horovod.torch")
    assert p.returncode == 1
    assert "without a working PyTorch framework" in p.stdout


def test_doctor_names_missing_dali():
    p = _doctor_without("nvidia.dali")
    assert p.returncode == 1 and "NVIDIA DALI is not installed" in p.stdout
