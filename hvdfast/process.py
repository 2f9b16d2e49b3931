"""How a process of ours ends. A leaf: imports nothing from hvdfast (the CLI and the bench workers both use it)."""
from __future__ import annotations

import sys


def lighten_exit() -> None:
    """For a process about to end: spare the interpreter's exit its cyclic garbage collection over every object
    torch, torchvision, timm, DALI and Horovod created (0.8-0.9 s of a 1.1 s teardown per process here, paid by
    every rank of every launch). The exit still joins threads, runs the atexit handlers (Horovod's shutdown,
    DALI's, logging's, the DataLoader workers'), calls MPI_Finalize and frees by reference count; what it skips is
    collecting cycles, whose memory the operating system takes back anyway. Our own files are closed before this
    (Reporter.close, checkpoints written whole)."""
    import gc
    gc.disable()
    gc.freeze()


def run_process(main_fn) -> None:
    """`if __name__ == "__main__"` of a module run as a process of its own (the bench workers): main, then the
    lighter exit."""
    try:
        code = main_fn()
    finally:
        lighten_exit()
    sys.exit(code)
