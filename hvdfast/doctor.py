"""`hvdfast doctor`: what is installed, what Horovod was built with, and what is missing (with the remedy).

Under mpirun (more than one rank) every rank reports and rank 0 compares them with mpi4py: version skew or
duplicate hostnames across nodes are the classic causes of hangs at hvd.init().
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

from .knobs import FROM_ENVIRONMENT

REMEDY_INSTALL = "run launch/install.sh (it builds Horovod 0.28.1 with PyTorch, Gloo and MPI)"


def _version(module: str):
    try:
        mod = __import__(module, fromlist=["__version__"])
        return getattr(mod, "__version__", "unknown"), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _mpi_info() -> dict:
    out = {"mpirun": shutil.which("mpirun"), "library": None, "mpi4py": None}
    try:
        import mpi4py
        mpi4py.rc.initialize = False  # version queries need no MPI_Init
        from mpi4py import MPI
        out["mpi4py"] = mpi4py.__version__
        out["library"] = MPI.Get_library_version().strip().splitlines()[0]
    except Exception as exc:
        out["mpi4py_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if out["mpirun"]:
            try:
                out["library"] = subprocess.run(["mpirun", "--version"], capture_output=True, text=True,
                                                timeout=20).stdout.splitlines()[0]
            except Exception:
                pass
    return out


def collect() -> tuple[dict, list[str]]:
    """(report, problems): problems are one line each, naming the missing piece and the remedy."""
    problems = []
    report = {"python": platform.python_version(), "executable": sys.executable, "host": platform.node(),
              "cpu_cores": os.cpu_count()}
    try:
        report["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    for name in ("torch", "torchvision"):
        report[name], err = _version(name)
        if err:
            problems.append(f"{name} is missing or broken ({err}); {REMEDY_INSTALL}.")
    if report["torch"]:
        import torch
        report["torch_cuda"] = torch.version.cuda
        report["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
        from .engine import auto_precision, cpu_bf16_native
        report["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the vector ISA torch's kernels use
        report["cpu_bf16"] = cpu_bf16_native()
        report["cpu_precision_auto"] = auto_precision("cpu", report["cpu_bf16"])
    hv, err = _version("horovod")
    if err:
        report["horovod"] = None
        problems.append(f"Horovod is not installed ({err}); {REMEDY_INSTALL}.")
    else:
        try:
            from . import dist
            report["horovod"] = dist.build_info()
        except Exception as exc:
            report["horovod"] = {"version": hv, "error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
            problems.append(f"Horovod {hv} is installed without a working PyTorch framework "
                            f"(import horovod.torch: {report['horovod']['error']}); {REMEDY_INSTALL}.")
        else:
            c = report["horovod"]["controllers"]
            if not (c["mpi"] or c["gloo"]):
                problems.append(f"Horovod was built without MPI and Gloo controllers; {REMEDY_INSTALL}.")
            if not report["horovod"]["hvdfast_build_patch"]:
                problems.append(f"Horovod {hv} was not built by launch/install.sh: without its build patch fp16 "
                                f"sums under Gloo can come back wrong, an elastic reset with the recipe's knobs "
                                f"crashes, horovodrun can lose a stopped run's exit status and Horovod's idle "
                                f"coordination rounds cost CPU workers ~3% of their compute; {REMEDY_INSTALL}.")
            knobs = dist.controller_problem(os.environ, c["mpi"])  # what hvd.init() would crash on
            if knobs:
                problems.append(knobs)
    report["dali"], err = _version("nvidia.dali")
    if err:
        problems.append(f"NVIDIA DALI is not installed ({err}); run launch/install.sh "
                        f"(pip package nvidia-dali-cuda130), or use data.backend=torchvision.")
    report["mpi"] = _mpi_info()
    # Horovod's own variables that outrank a recipe's settings (tuned.load_config): a forgotten export changes runs
    report["horovod_environment"] = {v: os.environ[v] for v in FROM_ENVIRONMENT if v in os.environ}
    return report, problems


def _fmt_flags(d: dict) -> str:
    return ", ".join(f"{k.upper()} [{'X' if v else ' '}]" for k, v in d.items())


def render(report: dict, problems: list[str]) -> str:
    lines = [f"hvdfast doctor on {report['host']}",
             f"  Python       {report['python']} ({report['executable']})",
             f"  torch        {report.get('torch')} (CUDA {report.get('torch_cuda') or 'none'})",
             f"  torchvision  {report.get('torchvision')}"]
    h = report.get("horovod")
    if isinstance(h, dict) and "controllers" in h:
        lines += [f"  Horovod      {h['version']}",
                  f"    frameworks:        {_fmt_flags(h['frameworks'])}",
                  f"    controllers:       {_fmt_flags(h['controllers'])}",
                  f"    tensor operations: {_fmt_flags(h['tensor_operations'])}",
                  f"    CUDA tensors:      {'yes' if h['cuda'] else 'no'}",
                  f"    hvdfast's patch:   {'yes' if h.get('hvdfast_build_patch') else 'no'}"]
    else:
        lines.append(f"  Horovod      {h.get('version') if isinstance(h, dict) else 'missing'}")
    lines.append(f"  DALI         {report.get('dali') or 'missing'}")
    m = report["mpi"]
    lines.append(f"  MPI          {m.get('library') or 'none'} (mpirun: {m.get('mpirun') or 'not on PATH'}, "
                 f"mpi4py {m.get('mpi4py') or 'missing'})")
    gpus = report.get("cuda_devices") or []
    lines.append(f"  CUDA devices {len(gpus)}" + (f": {', '.join(gpus)}" if gpus else ""))
    lines.append(f"  CPU cores    {report['cpu_cores']} (this process may use {report.get('cpu_affinity', '?')})")
    if "cpu_bf16" in report:
        bf16 = "native" if report["cpu_bf16"] else "emulated"
        lines.append(f"  CPU kernels  {report['cpu_capability']}, bf16 {bf16} "
                     f"(train.precision=auto trains in {report['cpu_precision_auto']} on this CPU)")
    for var, text in (report.get("horovod_environment") or {}).items():
        lines.append(f"  Environment  {var}={text} (outranks the recipe's and the tuned file's "
                     f"{FROM_ENVIRONMENT[var][0]}; a command-line override outranks it)")
    if problems:
        lines.append("PROBLEMS:")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append("OK: the stack is complete.")
    return "\n".join(lines)


def _mpi_world():
    """(comm, rank, size) when started by mpirun with more than one rank, else None."""
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1"))) <= 1:
        return None
    from mpi4py import MPI
    if not MPI.Is_initialized():
        MPI.Init()  # _mpi_info() turned mpi4py's automatic MPI_Init off (version queries need none)
    return MPI.COMM_WORLD


def compare_ranks(reports: list[dict]) -> list[str]:
    """Problems across ranks: duplicate hostnames on different nodes are indistinguishable; versions must match."""
    problems = []
    keys = ("python", "torch", "torchvision", "dali")
    ref = reports[0]
    for i, r in enumerate(reports[1:], start=1):
        for k in keys:
            if r.get(k) != ref.get(k):
                problems.append(f"rank {i} on {r['host']} has {k} {r.get(k)} but rank 0 on {ref['host']} has "
                                f"{ref.get(k)}; install the same versions on every node (launch/install.sh).")
        hv = (r.get("horovod") or {}).get("version") if isinstance(r.get("horovod"), dict) else None
        hv0 = (ref.get("horovod") or {}).get("version") if isinstance(ref.get("horovod"), dict) else None
        if hv != hv0:
            problems.append(f"rank {i} on {r['host']} has Horovod {hv} but rank 0 has {hv0}; "
                            f"install the same build on every node.")
    return problems


def main(as_json: bool = False) -> int:
    report, problems = collect()
    comm = _mpi_world()
    if comm is not None:
        reports = comm.gather(report, root=0)
        rank = comm.Get_rank()
        from mpi4py import MPI
        MPI.Finalize()  # initialised by _mpi_world, so finalised here (mpi4py would not at exit)
        if rank != 0:
            return 0
        problems = problems + compare_ranks(reports)
        report = {"ranks": reports}
    if as_json:
        print(json.dumps({"report": report, "problems": problems}, indent=2, default=str))
    elif comm is not None:
        print(render(report["ranks"][0], []))
        hosts = sorted({r["host"] for r in report["ranks"]})
        print(f"  {len(report['ranks'])} ranks on {len(hosts)} host(s): {', '.join(hosts)}")
        print("PROBLEMS:\n" + "\n".join(f"  - {p}" for p in problems) if problems else "OK: all ranks agree.")
    else:
        print(render(report, problems))
    return 1 if problems else 0
