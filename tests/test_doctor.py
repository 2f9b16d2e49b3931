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
    assert rep["horovod"]["hvdfast_build_patch"] is True  # built by launch/install.sh
    assert p.returncode == (1 if out["problems"] else 0)
    human = subprocess.run(hvdfast_cmd("doctor"), capture_output=True, text=True, timeout=120, env=launcher_env())
    assert "controllers:" in human.stdout and "GLOO [X]" in human.stdout
    # what train.precision=auto gives on this CPU, and why (emulated bf16 is 3.5-15x slower than fp32)
    assert rep["cpu_precision_auto"] == ("bf16" if rep["cpu_bf16"] else "fp32")
    assert f"trains in {rep['cpu_precision_auto']} on this CPU" in human.stdout


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


def test_doctor_names_a_horovod_without_the_build_patch():
    """A Horovod built elsewhere (a cluster's module, `pip install horovod` against an older torch) has horovodrun's
    process handling as published: the module without the function the patch adds. Doctor says what that costs."""
    name = "horovod.runner.common.util.safe_shell_exec"
    code = ("import sys, types, horovod.runner.common.util as util; "
            f"util.safe_shell_exec = sys.modules[{name!r}] = types.ModuleType({name!r}); "
            "from hvdfast.cli import main; sys.exit(main(['doctor']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=launcher_env(), cwd=ROOT)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "hvdfast's patch:   no" in p.stdout
    assert "was not built by launch/install.sh: without its build patch fp16 sums under Gloo" in p.stdout


def test_doctor_names_horovod_knobs_that_would_crash_it():
    env = {**launcher_env(), "HOROVOD_CPU_OPERATIONS": "gloo"}
    p = subprocess.run(hvdfast_cmd("doctor"), capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1
    assert "HOROVOD_CPU_OPERATIONS=gloo with Horovod's MPI controller crashes" in p.stdout


def test_doctor_names_horovods_variables_that_outrank_the_recipe():
    env = {**launcher_env(), "HOROVOD_CYCLE_TIME": "5"}
    p = subprocess.run(hvdfast_cmd("doctor"), capture_output=True, text=True, timeout=120, env=env)
    assert "  Environment  HOROVOD_CYCLE_TIME=5 (outranks the recipe's and the tuned file's horovod.cycle_time_ms; " \
           "a command-line override outranks it)" in p.stdout.splitlines()
    assert "Environment" not in subprocess.run(hvdfast_cmd("doctor"), capture_output=True, text=True, timeout=120,
                                               env=launcher_env()).stdout


def test_doctor_under_mpirun_reports_every_rank():
    """`mpirun -np 2 hvdfast doctor` (README): rank 0 gathers both ranks' stacks with mpi4py (MPI_Init was
    never called when doctor turned mpi4py's automatic init off for its version query, and every rank aborted)."""
    from conftest import run_launcher
    p = run_launcher("mpirun", 2, [sys.executable, "-m", "hvdfast.cli", "doctor"], timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "2 ranks on 1 host(s)" in p.stdout and "OK: all ranks agree." in p.stdout
    assert "MPI_INIT" not in p.stdout + p.stderr
