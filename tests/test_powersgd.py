"""PowerSGD's arithmetic, with the allreduce done by hand over simulated ranks (the real allreduce through
horovodrun / mpirun is in test_parallel and test_train_parallel)."""
import torch

from hvdfast.dist import powersgd

# a bucket as BucketedOptimizer lays it out: a conv weight (16 x 3x3x8), a bias (16), a linear weight (10 x 16)
SHAPES = [(16, 8, 3, 3), (16,), (10, 16)]


def layout(shapes=SHAPES):
    out, offset = [], 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        out.append((offset, n, s))
        offset += n
    return out, offset


def run_step(buckets, grads, op="average"):
    """One PowerSGD step over simulated ranks: each rank's gradient is accumulated into the bucket's
    accumulate_into buffer, as backward does under BucketedOptimizer (after zero_grad's zero_accumulator), and the
    bucket's flat holds the reduced gradient on exit. The allreduce is the mean (op=average) or the sum
    (op=prescaled)."""
    for b, g in zip(buckets, grads):
        b.zero_accumulator()
        b.accumulate_into.add_(g)
    wires = [b.begin() for b in buckets]
    while wires[0] is not None:
        reduced = torch.stack(wires).sum(0)
        if op == "average":
            reduced /= len(buckets)
        for w in wires:
            w.copy_(reduced)  # in place, as Horovod's allreduce_async_ does
        wires = [b.advance(w) for b, w in zip(buckets, wires)]
    return [b.flat.clone() for b in buckets]


def make(rank=2, ranks=2, local_scale=1.0, shapes=SHAPES):
    lay, numel = layout(shapes)
    return [powersgd.PowerSGDBucket(torch.zeros(numel), lay, rank=rank, seed=7, local_scale=local_scale)
            for _ in range(ranks)], lay, numel


def test_which_tensors_are_compressed():
    assert powersgd.worth_compressing((16, 8, 3, 3), 2)        # (16 + 72) * 2 * 2 < 1152
    assert not powersgd.worth_compressing((16,), 2)             # a vector goes whole
    assert powersgd.worth_compressing((10, 16), 2)              # (10 + 16) * 2 * 2 = 104 < 160
    assert not powersgd.worth_compressing((10, 16), 4)          # 208 >= 160: not worth it
    assert not powersgd.worth_compressing((64, 3, 1, 1), 4)     # m = 3: a rank-3 "compression" would grow it


def test_resnet50_at_rank_4_sends_a_small_fraction_of_its_gradient():
    import torchvision
    model = torchvision.models.resnet50()
    lay, numel = layout([tuple(p.shape) for p in model.parameters()])
    b = powersgd.PowerSGDBucket(torch.zeros(numel), lay, rank=4, seed=0)
    assert numel == 25_557_032
    # both rounds: 1.5% of the gradient (1.54 MB per step in fp32), of which 54,120 are vectors sent whole
    assert b.wire_elements == 384_084


def test_ranks_end_with_identical_gradients_and_vectors_are_averaged_exactly():
    buckets, lay, numel = make()
    g = [torch.randn(numel, generator=torch.Generator().manual_seed(r)) for r in range(2)]
    out = run_step(buckets, g)
    assert torch.equal(out[0], out[1])
    bias = slice(lay[1][0], lay[1][0] + lay[1][1])
    assert torch.equal(out[0][bias], (g[0][bias] + g[1][bias]) / 2)
    conv = slice(0, lay[0][1])
    assert not torch.allclose(out[0][conv], ((g[0] + g[1]) / 2)[conv], atol=1e-3)  # it was compressed


def test_gradients_in_a_shared_low_rank_subspace_come_through_exactly():
    # Every rank's weight gradient is A B_r^T with a shared A (16 x 2): the rank-2 power step finds span(A), so
    # the approximation is the true average (up to rounding).
    buckets, lay, numel = make(rank=2)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(16, 2, generator=gen)
    g = []
    for _ in range(2):
        flat = torch.randn(numel, generator=gen)
        flat[:lay[0][1]] = (a @ torch.randn(2, 72, generator=gen)).reshape(-1)
        g.append(flat)
    out = run_step(buckets, g)
    conv = slice(0, lay[0][1])
    assert torch.allclose(out[0][conv], ((g[0] + g[1]) / 2)[conv], atol=1e-5)


def test_error_feedback_keeps_what_the_approximation_left_out():
    # error_r = (local gradient + previous error) - approximation, so over the ranks the mean of the errors plus
    # the approximation is the mean of what went in: nothing is lost, only delayed.
    buckets, lay, numel = make()
    gen = torch.Generator().manual_seed(5)
    g1 = [torch.randn(numel, generator=gen) for _ in range(2)]
    out1 = run_step(buckets, g1)
    mean_in = (g1[0] + g1[1]) / 2
    mean_err = (buckets[0].error + buckets[1].error) / 2
    assert torch.allclose(out1[0] + mean_err, mean_in, atol=1e-5)
    assert mean_err.abs().max() > 1e-2  # something was left out ...
    g2 = [torch.randn(numel, generator=gen) for _ in range(2)]
    errors = [b.error.clone() for b in buckets]
    out2 = run_step(buckets, g2)
    # ... and goes into the next step's input
    mean_in2 = (g2[0] + errors[0] + g2[1] + errors[1]) / 2
    assert torch.allclose(out2[0] + (buckets[0].error + buckets[1].error) / 2, mean_in2, atol=1e-5)


def test_prescaled_sum_gives_the_same_average_with_the_error_in_local_units():
    avg, lay, numel = make()
    pre, _, _ = make(local_scale=0.5)
    gen = torch.Generator().manual_seed(11)
    g = [torch.randn(numel, generator=gen) for _ in range(2)]
    out_avg = run_step(avg, g, "average")
    out_pre = run_step(pre, [x / 2 for x in g], "prescaled")  # the loss divided by 2 workers, then summed
    assert torch.allclose(out_pre[0], out_avg[0], atol=1e-6)
    assert torch.allclose(pre[0].error, avg[0].error / 2, atol=1e-6)


def test_an_overflowed_gradient_passes_through_but_leaves_no_trace_in_the_state():
    buckets, lay, numel = make()
    gen = torch.Generator().manual_seed(13)
    run_step(buckets, [torch.randn(numel, generator=gen) for _ in range(2)])
    bad = [torch.randn(numel, generator=gen) for _ in range(2)]
    bad[1][0] = float("inf")
    out = run_step(buckets, bad)
    assert not torch.isfinite(out[0]).all()  # the loss scaler sees the overflow and skips the step
    fresh, _, _ = make()
    for b in buckets:
        assert b.error.abs().max() == 0
        assert torch.equal(b.q_wire, fresh[0].q_wire)  # Q is back to the first step's draw


def test_the_three_products_are_the_matrix_products_at_every_rank():
    """project / project_back / finish against float64 matrix products: float32 through the numba loops, float64
    through torch (the path GPUs and other dtypes take)."""
    gen = torch.Generator().manual_seed(17)
    nan = float("nan")
    for r in (1, 2, 3, 4, 8):
        mat = torch.randn(64, 576, generator=gen, dtype=torch.float64)
        p, qt = torch.randn(64, r, generator=gen, dtype=torch.float64), torch.randn(r, 576, generator=gen,
                                                                                        dtype=torch.float64)
        for dtype in (torch.float32, torch.float64):
            m_, p_, qt_ = mat.to(dtype), p.to(dtype), qt.to(dtype)
            assert powersgd._cpu_loops(m_, p_, qt_) == (dtype == torch.float32)
            tol = dict(rtol=1e-5, atol=1e-4)
            out = torch.full((64, r), nan, dtype=dtype)
            powersgd.project(m_, qt_, out)
            assert torch.allclose(out.double(), mat @ qt.t(), **tol)
            out = torch.full((r, 576), nan, dtype=dtype)
            powersgd.project_back(p_, m_, out)
            assert torch.allclose(out.double(), p.t() @ mat, **tol)
            out = torch.full((64, 576), nan, dtype=dtype)
            powersgd.finish(p_, qt_, out, None, 0.5)
            assert torch.allclose(out.double(), p @ qt, **tol)
            err = m_.clone()
            out = torch.full((64, 576), nan, dtype=dtype)
            powersgd.finish(p_, qt_, out, err, 0.5)
            assert torch.allclose(out.double(), p @ qt, **tol)
            assert torch.allclose(err.double(), mat - 0.5 * (p @ qt), **tol)


def test_an_inf_goes_through_the_compiled_products():
    """The loops may reassociate sums but assume nothing about finiteness: an fp16 overflow must reach the
    isfinite check in advance() (see test_an_overflowed_gradient_...)."""
    mat = torch.ones(4, 8)
    mat[2, 3] = float("inf")
    p = torch.zeros(4, 2)
    powersgd.project(mat, torch.ones(2, 8), p)
    assert torch.isinf(p[2]).all() and torch.isfinite(p[[0, 1, 3]]).all()
