import pytest
import torch

from hvdfast.dist import compression


@pytest.mark.parametrize("name,wire", [("none", torch.float32), ("fp16", torch.float16), ("bf16", torch.float32)])
def test_channels_last_gradients_go_out_contiguous_and_come_back_channels_last(name, wire):
    comp = compression.get(name)
    g = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert not g.is_contiguous()
    sent, ctx = comp.compress(g)
    assert sent.is_contiguous() and sent.dtype == wire
    back = comp.decompress(sent, ctx)
    assert back.dtype == torch.float32 and back.is_contiguous(memory_format=torch.channels_last)
    assert not back.is_contiguous()
    # exact: the round trip is one rounding to the wire dtype (fp16 may hit subnormals, so no relative bound)
    expected = {"none": g, "fp16": g.half().float(), "bf16": g.to(torch.bfloat16).float()}[name]
    assert torch.equal(back, expected)


def test_full_precision_hands_horovod_the_gradient_storage_itself():
    """No copy for channels_last gradients: Horovod reduces the NHWC view in place, and the optimizer sees the
    result through the channels_last view of the same memory."""
    g = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    sent, ctx = compression.NoneCompressor.compress(g)
    assert sent.data_ptr() == g.data_ptr() and sent.is_contiguous()
    sent.mul_(0.5)                                   # what an in-place allreduce average does to the wire tensor
    back = compression.NoneCompressor.decompress(sent, ctx)
    assert back.data_ptr() == g.data_ptr() and back.stride() == g.stride()
    torch.testing.assert_close(back, g)              # g itself changed: same storage


def test_bf16_round_trip_keeps_range_and_bf16_precision():
    comp = compression.BF16Compressor
    x = torch.tensor([1e-30, 3.0e5, -7.25, 1.0 + 2 ** -10, 1e38])
    sent, ctx = comp.compress(x)
    back = comp.decompress(sent, ctx)
    # bf16 keeps fp32's exponent range: no overflow at 3e5 or 1e38, no underflow at 1e-30 (fp16 loses all three)
    assert torch.isfinite(back).all() and (back != 0).all()
    torch.testing.assert_close(back, x, rtol=2 ** -8, atol=0)
    # ... and rounds to 8 significant bits: 1 + 2^-10 is not representable
    assert back[3].item() == 1.0
    assert torch.equal(back, x.to(torch.bfloat16).float())


def test_fp16_round_trip_precision_and_its_overflow():
    comp = compression.FP16Compressor
    x = torch.tensor([0.1, -2.5, 1000.0])
    back = comp.decompress(*comp.compress(x))
    torch.testing.assert_close(back, x, rtol=1e-3, atol=0)
    big, ctx = comp.compress(torch.tensor([1e5]))
    assert torch.isinf(comp.decompress(big, ctx)).all()


def test_non_float_tensors_pass_through():
    t = torch.arange(6)
    for comp in compression.COMPRESSORS.values():
        sent, ctx = comp.compress(t)
        assert sent.dtype == torch.int64 and torch.equal(comp.decompress(sent, ctx), t)
