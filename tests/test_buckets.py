"""Gradient bucket planning and views (the multi-rank reduction is in test_parallel and test_train_parallel)."""
import pytest
import torch

from hvdfast.dist.buckets import _view, plan


def test_plan_fills_buckets_last_parameter_first_and_gives_a_big_tensor_its_own():
    # sizes in fp32 elements; 64-byte buckets hold 16 elements
    assert plan([4, 4, 30, 8, 8], bucket_bytes=64) == [[4, 3], [2], [1, 0]]
    assert plan([1] * 5, bucket_bytes=1 << 20) == [[4, 3, 2, 1, 0]]
    assert sorted(i for b in plan([3, 7, 2, 9, 1, 5], 20) for i in b) == list(range(6))  # every parameter once


def test_plan_gives_the_first_parameters_a_last_bucket_of_their_own():
    # last_bytes: the gradients backward produces last (the first parameters) in a last bucket of at most that size
    # (fp32: 64-byte buckets hold 16 elements, a 16-byte last bucket 4)
    assert plan([4, 4, 30, 8, 8], bucket_bytes=64, last_bytes=16) == [[4, 3], [2], [1], [0]]
    assert plan([2, 2, 4, 8, 8], bucket_bytes=64, last_bytes=16) == [[4, 3], [2], [1, 0]]
    assert plan([40, 4, 8], bucket_bytes=64, last_bytes=16) == [[2, 1], [0]]  # the first parameter, however big
    assert plan([1] * 5, bucket_bytes=1 << 20, last_bytes=1 << 20) == [[4, 3, 2, 1, 0]]  # all fit: one bucket
    assert plan([4, 4, 30, 8, 8], bucket_bytes=64, last_bytes=0) == plan([4, 4, 30, 8, 8], bucket_bytes=64)


def test_views_share_the_flat_buffer_and_keep_channels_last_strides():
    weight = torch.empty(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    bias = torch.empty(8)
    flat = torch.zeros(weight.numel() + bias.numel())
    w, b = _view(flat, 0, weight), _view(flat, weight.numel(), bias)
    assert w.shape == weight.shape and w.stride() == weight.stride()
    assert b.shape == bias.shape
    w.add_(1.0)
    b.add_(2.0)
    assert flat[:weight.numel()].eq(1).all() and flat[weight.numel():].eq(2).all()


def test_fusion_threshold_stays_below_the_bucket_size():
    from hvdfast.config import HorovodConfig
    from hvdfast.dist import horovod_env
    mib = 1024 * 1024
    assert horovod_env(HorovodConfig(fusion_threshold_mb=64))["HOROVOD_FUSION_THRESHOLD"] == str(64 * mib)
    assert horovod_env(HorovodConfig(fusion_threshold_mb=64, bucket_mb=25))["HOROVOD_FUSION_THRESHOLD"] == \
        str(int(12.5 * mib))
    assert horovod_env(HorovodConfig(fusion_threshold_mb=1, bucket_mb=25))["HOROVOD_FUSION_THRESHOLD"] == str(mib)


def test_hierarchical_allreduce_is_passed_to_horovod_only_when_asked():
    from hvdfast.config import HorovodConfig
    from hvdfast.dist import horovod_env
    assert "HOROVOD_HIERARCHICAL_ALLREDUCE" not in horovod_env(HorovodConfig())
    assert horovod_env(HorovodConfig(hierarchical_allreduce=True))["HOROVOD_HIERARCHICAL_ALLREDUCE"] == "1"


def test_mpi_allreduce_algorithm_is_forced_through_open_mpis_environment_only_when_asked():
    from hvdfast.config import HorovodConfig
    from hvdfast.dist import horovod_env
    assert not any(k.startswith("OMPI_MCA_coll_tuned") for k in horovod_env(HorovodConfig()))
    env = horovod_env(HorovodConfig(mpi_allreduce="recursive_doubling"))
    assert env["OMPI_MCA_coll_tuned_use_dynamic_rules"] == "1"
    assert env["OMPI_MCA_coll_tuned_allreduce_algorithm"] == "recursive_doubling"


def test_every_mpi_allreduce_choice_is_an_algorithm_this_open_mpi_knows():
    # the config's names go to Open MPI as they are: each must be one of coll/tuned's enumerator values
    import shutil
    import subprocess
    from hvdfast.config import CHOICES
    if shutil.which("ompi_info") is None:
        pytest.skip("no ompi_info on PATH (Open MPI not installed)")
    out = subprocess.run(["ompi_info", "--param", "coll", "tuned", "--level", "9", "--parsable"],
                         capture_output=True, text=True, timeout=60).stdout
    known = {line.rsplit(":", 1)[1] for line in out.splitlines()
             if line.startswith("mca:coll:tuned:param:coll_tuned_allreduce_algorithm:enumerator:value:")}
    assert "ring" in known
    assert set(CHOICES["horovod.mpi_allreduce"]) - {"auto"} <= known
