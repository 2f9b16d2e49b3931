"""Gradient compressors in Horovod's Compressor interface (compress(tensor) -> (tensor, ctx); decompress(tensor, ctx)).

Two jobs beyond the wire format:
* Horovod 0.28.1 refuses non-contiguous tensors ("Tensor is required to be contiguous."), and the gradients of a
  channels_last model are NHWC-strided 4-D tensors. An allreduce is elementwise, so the layout does not matter as
  long as every rank uses the same one: compress() hands Horovod the NHWC *view* of the gradient
  (`permute(0, 2, 3, 1)` of a channels_last tensor is contiguous and shares its storage), Horovod reduces it in
  place, and decompress() permutes the view back. No copy, where a contiguous() copy out and a channels_last copy
  back would cost two passes over ~95% of ResNet-50's gradient bytes every step.
* bf16: Horovod 0.28.1 has no bfloat16 wire type (horovod/common/message.h lists fp16/fp32/fp64 only, and its
  torch adapter rejects torch.bfloat16). BF16 therefore rounds each gradient to bfloat16 — the numerics a bf16
  wire would give, with fp32's range so nothing overflows the way fp16 can — and carries it in fp32 words. It does
  NOT save bandwidth; use fp16 for that. `hvdfast bench allreduce` measures all three.

No Horovod import here: Horovod only calls these two class methods.
"""
from __future__ import annotations

import torch


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _wire_view(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(a contiguous tensor on t's storage, whether it is the NHWC view of a channels_last t)."""
    if _is_channels_last(t):
        return t.permute(0, 2, 3, 1), True
    return t.contiguous(), False


class NoneCompressor:
    """Full precision; hands Horovod a contiguous view of the gradient (no copy)."""

    wire_dtype: torch.dtype | None = None

    @classmethod
    def _round(cls, t: torch.Tensor) -> torch.Tensor:
        if cls.wire_dtype is not None and t.is_floating_point() and t.dtype != cls.wire_dtype:
            return t.to(cls.wire_dtype)
        return t

    @classmethod
    def compress(cls, tensor: torch.Tensor):
        out, nhwc = _wire_view(tensor)
        return cls._round(out), (tensor.dtype, nhwc)

    @classmethod
    def decompress(cls, tensor: torch.Tensor, ctx):
        dtype, nhwc = ctx
        out = tensor if tensor.dtype == dtype else tensor.to(dtype)
        return out.permute(0, 3, 1, 2) if nhwc else out


class FP16Compressor(NoneCompressor):
    """Half the bytes on the wire; values beyond ±65504 overflow (unscaled AMP gradients rarely get there)."""

    wire_dtype = torch.float16


class BF16Compressor(NoneCompressor):
    """bfloat16 rounding with fp32 range, carried in fp32 (see the module docstring for why)."""

    @classmethod
    def _round(cls, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.dtype != torch.bfloat16:
            return t.to(torch.bfloat16).to(torch.float32)
        return t


COMPRESSORS = {"none": NoneCompressor, "fp16": FP16Compressor, "bf16": BF16Compressor}


def get(name: str):
    return COMPRESSORS[name]
