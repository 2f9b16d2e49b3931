"""PowerSGD's three products on a CPU, each one pass over the gradient: numba-compiled loops.

For a gradient matrix M (n x m, rows contiguous) and the small rank r PowerSGD uses (Q kept as its r x m transpose):
    project(M, qt, p):                  p = M Q             (n x r)
    project_back(p, M, qt):             Q^T = P^T M          (r x m)
    finish(p, qt, out, err, scale, e):  out = P Q^T; if e: err -= scale * out
MKL's sgemm (what torch.mm calls on a CPU) is slow at an inner or outer dimension of 1-8: on ResNet-50's 54
compressed matrices (102 MB, one thread, AMD EPYC, 2026-11-26) the three products took 8.8 + 8.1 ms and P Q^T plus
the error's update 12.3 ms; these loops 5.2 + 5.3 + 9.3 ms (`finish` bit-identical to the rank-one updates it
replaces). Each loop keeps one row of M (at most 18 KB here) and Q (r x m) in cache and reads M once, so it runs
near the memory's speed, where sgemm's blocking for large inner dimensions does not pay.

numba (a well-kept LLVM JIT, which DALI also uses for its Python operators) compiles these on first use (~1 s, kept
in numba's on-disk cache after that). fastmath is limited to reassociation and contraction, which lets LLVM
vectorise the sums: no assumption that values are finite, so an fp16 overflow's inf still reaches the check in
PowerSGDBucket.advance. Only float32 on the CPU comes here (see powersgd.py); GPUs keep cuBLAS.
"""
from __future__ import annotations

import numba
import numpy as np

_FLAGS = dict(fastmath={"reassoc", "contract"}, boundscheck=False, nogil=True)


def _jit(fn):
    try:
        return numba.njit(cache=True, **_FLAGS)(fn)
    except RuntimeError:  # no folder to cache in (a read-only install and home): compile in every process
        return numba.njit(cache=False, **_FLAGS)(fn)


@_jit
def project(mat, qt, p):  # pragma: no cover - compiled
    n, m = mat.shape
    r = qt.shape[0]
    for i in range(n):
        for k in range(r):
            acc = np.float32(0.0)
            for j in range(m):
                acc += mat[i, j] * qt[k, j]
            p[i, k] = acc


@_jit
def project_back(p, mat, qt):  # pragma: no cover - compiled
    n, m = mat.shape
    r = qt.shape[0]
    qt[:] = 0
    for i in range(n):
        for k in range(r):
            c = p[i, k]
            for j in range(m):
                qt[k, j] += c * mat[i, j]


@_jit
def finish(p, qt, out, err, scale, store_error):  # pragma: no cover - compiled
    n, m = out.shape
    r = qt.shape[0]
    for i in range(n):
        c = p[i, 0]
        for j in range(m):
            out[i, j] = c * qt[0, j]
        for k in range(1, r):
            c = p[i, k]
            for j in range(m):
                out[i, j] += c * qt[k, j]
        if store_error:
            for j in range(m):
                err[i, j] -= scale * out[i, j]
