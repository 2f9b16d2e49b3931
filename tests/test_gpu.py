"""The GPU path: DALI mixed (nvJPEG) decode to fp16 NHWC, and an fp16 AMP step in Horovod's order.
Skipped where there is no CUDA device (CI and the 2-core machine); run on a GPU node with launch/test.sh -k gpu."""
import pytest
import torch

from hvdfast import engine
from hvdfast.data.folder import scan

from conftest import make_jpeg_tree

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@gpu
@pytest.mark.parametrize("hw_decoder_load", [0.0, 0.65, 1.0])  # nvJPEG on the SMs only, DALI's default, hardware only
def test_dali_mixed_decode_gives_fp16_channels_last_on_the_gpu(tmp_path, hw_decoder_load):
    from hvdfast.data.dali import DaliLoader, FolderSource
    root = make_jpeg_tree(tmp_path, classes=2, per_class={"train": 8, "val": 2}, side=96)
    train, _ = scan(root)
    loader = DaliLoader(FolderSource(train, True, 0, False), train=True, rank=0, size=1, batch=4, seed=0,
                        threads=2, image_size=64, val_resize=72, crop_scale=(0.5, 1.0), flip=True,
                        device=torch.device("cuda", 0), channels_last=True, epochs=1,
                        hw_decoder_load=hw_decoder_load)
    batches = list(loader.epoch(0))
    assert len(batches) == loader.steps_per_epoch == 4
    images, labels = batches[0]
    assert images.is_cuda and images.dtype == torch.float16 and images.shape == (4, 3, 64, 64)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.is_cuda and labels.dtype == torch.long


@gpu
def test_fp16_amp_step_with_loss_scaler():
    prec = engine.precision_for("auto", torch.device("cuda"))
    assert prec.name == "fp16" and prec.scaler is not None
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)).cuda()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.synchronize = lambda: None            # a single process: Horovod's extra methods are no-ops here
    import contextlib
    opt.skip_synchronize = contextlib.nullcontext
    before = [p.detach().clone() for p in model.parameters()]
    with prec.autocast():
        loss = model(x).float().pow(2).mean()
    prec.scaler.scale(loss).backward()
    engine.optimizer_step(opt, model, prec, clip_grad_norm=1.0)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it_natively():
    assert engine.auto_precision("cpu", cpu_bf16=True) == "bf16"
    assert engine.auto_precision("cpu", cpu_bf16=False) == "fp32"  # emulated bf16 is 3.5-15x slower than fp32
    assert engine.auto_precision("cuda", cpu_bf16=False) == "fp16"
    prec = engine.precision_for("auto", torch.device("cpu"))
    assert prec.name == ("bf16" if engine.cpu_bf16_native() else "fp32") and prec.scaler is None
    assert (prec.dtype is torch.bfloat16) == (prec.name == "bf16")
    # fp16 asked for on a CPU trains the GPU recipe's way (autocast, a loss scaler), to check that recipe where there
    # is no GPU
    prec = engine.precision_for("fp16", torch.device("cpu"))
    assert prec.dtype is torch.float16 and prec.scaler is not None and prec.scaler.is_enabled()
    # a precision asked for on a CPU that emulates it trains as asked, with one line saying what it costs
    assert "3.5-15x slower than fp32" in engine.emulated_note("bf16", "cpu", cpu_bf16=False, cpu_fp16=False)
    note = engine.emulated_note("fp16", "cpu", cpu_bf16=True, cpu_fp16=False)
    assert "6-17x slower than fp32" in note and "auto picks bf16 on this CPU" in note
    assert engine.emulated_note("bf16", "cpu", cpu_bf16=True, cpu_fp16=False) is None
    assert engine.emulated_note("fp16", "cpu", cpu_bf16=False, cpu_fp16=True) is None
    assert engine.emulated_note("fp32", "cpu", cpu_bf16=False, cpu_fp16=False) is None
    assert engine.emulated_note("bf16", "cuda", cpu_bf16=False, cpu_fp16=False) is None
    assert engine.emulated_note("fp16", "cuda", cpu_bf16=False, cpu_fp16=False) is None


@pytest.mark.parametrize("local_size,gpus,nccl,ok", [(1, 1, True, True), (8, 8, True, True), (2, 1, True, False),
                                                     (4, 2, True, False), (2, 1, False, True), (2, 0, True, True)])
def test_more_workers_than_gpus_is_refused_only_where_nccl_would_fail(local_size, gpus, nccl, ok):
    # Seen on an H100: 2 workers on 1 GPU died in ncclCommInitRank ("invalid usage") with a traceback per rank.
    from hvdfast.dist import gpu_problem
    problem = gpu_problem(local_size, gpus, nccl)
    assert (problem is None) == ok
    if problem:
        assert f"{local_size} workers on this node but {gpus} GPU(s)" in problem
        assert f"-np {gpus}" in problem and "CUDA_VISIBLE_DEVICES=" in problem
