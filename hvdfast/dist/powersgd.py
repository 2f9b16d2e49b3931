"""PowerSGD gradient compression on Horovod's allreduce, one gradient bucket at a time.

Follows Vogels, Karimireddy and Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization" (NeurIPS 2019, Algorithm 1: one step of subspace iteration, warm-started from the previous step's Q,
with error feedback), and the choices of its reference implementation as PyTorch ships it in
torch/distributed/algorithms/ddp_comm_hooks/powerSGD_hook.py: a tensor is compressed only where that saves at least
`MIN_COMPRESSION_RATE` x its bytes, the error is the local (error-compensated) gradient minus the averaged
approximation, Q starts from a seeded normal draw identical on every rank.

For each weight M (n x m: the output channels x everything else, in the bucket's memory layout, which every rank
shares) and rank r:
    round 1:  M = error + gradient;  P = M Q  -> allreduce [P ..., uncompressed vectors ...]
    round 2:  P = orthonormal(P);  Q = M^T P  -> allreduce [Q ...]  (Q kept as its transpose, see __init__)
    then:     approx = P Q^T;  error = M - approx;  the gradient is approx (averaged, as Horovod's Average gives)
Two allreduces of (n + m) r numbers instead of one of n m: ResNet-50 at r = 4 sends 1.5% of its gradient
bytes (see `PowerSGDBucket.wire_elements`).

One difference from the DDP hook: its uncompressed tensors travel in an allreduce of their own before the Ps, here
they share the Ps' allreduce (two round trips per bucket instead of three; on a slow link each costs latency).

M costs no pass of its own: with error feedback, backward accumulates the gradients straight into the error
buffer (`accumulate_into`: the parameters' .grad are views of it until synchronize), which therefore holds
M = error + gradient when the bucket is ready; the averaged approximation goes to the bucket's flat buffer, which
the parameters' .grad view for the optimizer, and the error is what stays: M - approx, in place. Per step that is
six passes over the gradient's bytes instead of ten (no zeroing of the bucket, no error + gradient): ResNet-50's
compression 42 -> 40 ms on one thread, most of the rest being the three skinny matrix products, plus the zeroing
of 102 MB that zero_grad no longer does. On a CPU the three products are loops that read the gradient once each
(lowrank.py; P Q^T and the error's update in one pass): a step's compression of ResNet-50 on one thread 34 -> 25 ms
(2026-11-26; it was 40 with torch.mm, 34 with P Q^T as rank-one updates).

No Horovod import: `buckets.BucketedOptimizer` runs the rounds and does the allreduces through `dist`.
"""
from __future__ import annotations

import torch

MIN_COMPRESSION_RATE = 2.0  # compress a tensor only if (n + m) r * rate < n m (the DDP hook's default)


def worth_compressing(shape: tuple[int, ...], rank: int) -> bool:
    """Whether a gradient of this shape is sent as rank-`rank` factors (matrices that shrink enough) or whole."""
    if len(shape) < 2:
        return False  # biases, BatchNorm weights: small, and a vector has no low-rank structure
    n = shape[0]
    m = 1
    for d in shape[1:]:
        m *= d
    r = min(rank, n, m)
    return (n + m) * r * MIN_COMPRESSION_RATE < n * m


def _cpu_loops(*tensors: torch.Tensor) -> bool:
    """Whether the numba loops (lowrank.py) do these products: float32 on a CPU, rows contiguous."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def project(mat: torch.Tensor, qt: torch.Tensor, p: torch.Tensor) -> None:
    """p = M Q (n x m times m x r; Q given as its r x m transpose)."""
    if _cpu_loops(mat, qt, p):
        from . import lowrank
        lowrank.project(mat.numpy(), qt.numpy(), p.numpy())
    else:
        torch.matmul(mat, qt.t(), out=p)


def project_back(p: torch.Tensor, mat: torch.Tensor, qt: torch.Tensor) -> None:
    """Q^T = P^T M (r x m)."""
    if _cpu_loops(p, mat, qt):
        from . import lowrank
        lowrank.project_back(p.numpy(), mat.numpy(), qt.numpy())
    else:
        torch.matmul(p.t(), mat, out=qt)


def finish(p: torch.Tensor, qt: torch.Tensor, out: torch.Tensor, error: torch.Tensor | None,
           scale: float) -> None:
    """out = P Q^T, and where `error` is given, error -= scale * out (one pass over both on a CPU)."""
    if _cpu_loops(p, qt, out) and (error is None or _cpu_loops(error)):
        from . import lowrank
        err = out if error is None else error
        lowrank.finish(p.numpy(), qt.numpy(), out.numpy(), err.numpy(), float(scale), error is not None)
        return
    torch.mm(p, qt, out=out)
    if error is not None:
        error.sub_(out, alpha=scale)


def orthonormalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning p's columns (reduced QR; Householder, so an all-zero column stays finite)."""
    return torch.linalg.qr(p.float(), mode="reduced").Q.to(p.dtype)


class PowerSGDBucket:
    """PowerSGD for one flat gradient bucket; `begin` and `advance` are the rounds BucketedOptimizer drives.

    layout: (offset, numel, shape) of each gradient in the flat bucket, in the bucket's order.
    local_scale: what the local gradient was already multiplied by before the allreduce sums it (1 / workers with
    op=prescaled, whose allreduce is a Sum of pre-divided gradients; 1 with op=average). The error is kept in the
    same units as the local gradient.
    """

    def __init__(self, flat: torch.Tensor, layout: list[tuple[int, int, tuple[int, ...]]], *, rank: int,
                 seed: int, local_scale: float = 1.0, error_feedback: bool = True):
        self.flat = flat
        self.local_scale = local_scale
        self.matrices: list[tuple[int, int, int, int]] = []   # (flat offset, n, m, r)
        self.vectors: list[tuple[int, int]] = []              # (flat offset, numel): sent whole
        for offset, numel, shape in layout:
            if worth_compressing(shape, rank):
                n = shape[0]
                m = numel // n
                self.matrices.append((offset, n, m, min(rank, n, m)))
            else:
                self.vectors.append((offset, numel))
        vec = sum(k for _, k in self.vectors)
        p_len = sum(n * r for _, n, _, r in self.matrices)
        q_len = sum(m * r for _, _, m, r in self.matrices)
        dtype, device = flat.dtype, flat.device
        # round-1 wire: the uncompressed tensors first, then every P; round-2 wire: every Q (kept: warm start)
        self.p_wire = torch.zeros(vec + p_len, dtype=dtype, device=device)
        self.q_wire = torch.zeros(q_len, dtype=dtype, device=device)
        # Q is stored transposed (r x m, rows contiguous): M Q^T and P^T M then stream M row by row, 5-10x faster
        # on a CPU than M Q and M^T P with an m x r Q (measured, one thread, ResNet-50's shapes)
        self._p, self._qt = [], []
        po, qo = vec, 0
        for _, n, m, r in self.matrices:
            self._p.append(self.p_wire[po:po + n * r].view(n, r))
            self._qt.append(self.q_wire[qo:qo + m * r].view(r, m))
            po, qo = po + n * r, qo + m * r
        self._seed = seed
        self.reset_q()
        self.error = torch.zeros_like(flat) if error_feedback and self.matrices else None
        self._round = 0

    @property
    def accumulate_into(self) -> torch.Tensor:
        """The buffer backward must accumulate the bucket's gradients into (its layout is flat's): the error
        buffer with error feedback (so it holds M = error + gradient when the bucket is ready), else flat."""
        return self.error if self.error is not None else self.flat

    def zero_accumulator(self) -> None:
        """Before the next backward: the uncompressed tensors start from zero; the matrices keep their error (a
        backward that no step followed leaves its gradient there, sent with the next step as error feedback
        sends what it delays: not dropped)."""
        if self.error is None:
            self.flat.zero_()
            return
        for offset, numel in self.vectors:
            self.error[offset:offset + numel].zero_()

    @property
    def wire_elements(self) -> int:
        """Numbers each rank contributes per step (both rounds), against flat.numel() uncompressed."""
        return self.p_wire.numel() + self.q_wire.numel()

    def state(self) -> dict:
        """What a resumed run needs to continue exactly: Q (the warm start, identical on every rank once averaged)
        and this rank's error. The live buffers, not copies: save them before the next step changes them."""
        return {"q": self.q_wire, "error": self.error}

    def load_state(self, q: torch.Tensor | None, error: torch.Tensor | None) -> None:
        """Restore what state() returned (None: keep the fresh value, a seeded Q or a zero error)."""
        if q is not None:
            self.q_wire.copy_(q)
        if error is not None and self.error is not None:
            self.error.copy_(error)

    def rejoin(self, local_scale: float) -> None:
        """An elastic reset changed the workers: the error starts over (the model may have rolled back to the last
        commit, whose later steps the error would otherwise count twice, and it was kept in the old local units);
        the caller gives every rank rank 0's Q."""
        self.local_scale = local_scale
        self._round = 0
        if self.error is not None:
            self.error.zero_()

    def reset_q(self) -> None:
        """Q from a normal draw that every rank makes alike (same seed), as at the first step."""
        g = torch.Generator().manual_seed(self._seed)
        for qt in self._qt:
            qt.copy_(torch.randn(qt.shape, generator=g, dtype=torch.float32))

    def _grad(self, offset: int, n: int, m: int) -> torch.Tensor:
        return self.flat[offset:offset + n * m].view(n, m)

    def _m(self, offset: int, n: int, m: int) -> torch.Tensor:
        """M, the compensated gradient: built in the error buffer (so finishing needs no copy of it), or the
        gradient itself without error feedback."""
        buf = self.error if self.error is not None else self.flat
        return buf[offset:offset + n * m].view(n, m)

    # -- the rounds ---------------------------------------------------------------------------------------------
    def begin(self) -> torch.Tensor:
        """The bucket's local gradients are complete: error-compensate, P = M Q. Returns round 1's wire."""
        self._round = 1
        at = 0
        acc = self.accumulate_into
        for offset, numel in self.vectors:
            self.p_wire[at:at + numel].copy_(acc[offset:offset + numel])
            if acc is self.error:
                acc[offset:offset + numel].zero_()  # sent whole: nothing of it stays in the error
            at += numel
        for (offset, n, m, _), p, qt in zip(self.matrices, self._p, self._qt):
            mat = self._m(offset, n, m)  # M = error + gradient: backward accumulated into the error buffer
            # warm start: last step's (averaged) Q, re-orthonormalised as the reference implementation does
            qt.copy_(orthonormalize(qt.t()).t())
            project(mat, qt, p)
        return self.p_wire

    def advance(self, reduced: torch.Tensor) -> torch.Tensor | None:
        """Round `reduced` came back (reduced in place). Returns the next round's wire, or None when the bucket
        holds the averaged gradient."""
        if self._round == 1:
            self._round = 2
            at = 0
            for offset, numel in self.vectors:
                self.flat[offset:offset + numel].copy_(self.p_wire[at:at + numel])
                at += numel
            if not self.matrices:
                return None
            for (offset, n, m, _), p, qt in zip(self.matrices, self._p, self._qt):
                p.copy_(orthonormalize(p))
                project_back(p, self._m(offset, n, m), qt)  # Q^T = P^T M
            return self.q_wire
        self._round = 0
        if not bool(torch.isfinite(self.q_wire).all()):
            # An inf/nan gradient (an fp16 loss-scale overflow) reached the factors. Pass it on, so the loss
            # scaler skips this step as it would uncompressed, but do not keep it in Q or the error.
            self._write_approx(store_error=False)
            self.reset_q()
            if self.error is not None:
                self.error.zero_()
            return None
        self._write_approx(store_error=self.error is not None)
        return None

    def _write_approx(self, store_error: bool) -> None:
        for (offset, n, m, _), p, qt in zip(self.matrices, self._p, self._qt):
            # the gradient: P Q^T, the average over ranks of each rank's M projected on P; the error: M (the local
            # compensated gradient, held in the error buffer) - what the average carried of it, in local units
            finish(p, qt, self._grad(offset, n, m), self._m(offset, n, m) if store_error else None,
                   self.local_scale)
