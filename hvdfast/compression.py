"""Gradient compressors in Horovod's Compressor interface (compress(tensor) -> (tensor, ctx); decompress(tensor, ctx)).

Two jobs beyond the wire format:
* Horovod 0.28.1 refuses non-contiguous tensors ("Tensor is required to be contiguous."), and the gradients of a
  channels_last model are NHWC-strided 4-D tensors. compress() hands Horovod a contiguous copy; decompress() gives
  the reduced tensor back in channels_last, so the optimizer sees the layout it expects.
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


class NoneCompressor:
    """Full precision; only fixes the memory layout."""

    wire_dtype: torch.dtype | None = None

    @classmethod
    def compress(cls, tensor: torch.Tensor):
        ctx = (tensor.dtype, _is_channels_last(tensor))
        out = tensor
        if cls.wire_dtype is not None and tensor.is_floating_point() and tensor.dtype != cls.wire_dtype:
            out = out.to(cls.wire_dtype)
        return out.contiguous(), ctx

    @classmethod
    def decompress(cls, tensor: torch.Tensor, ctx):
        dtype, channels_last = ctx
        out = tensor if tensor.dtype == dtype else tensor.to(dtype)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


class FP16Compressor(NoneCompressor):
    """Half the bytes on the wire; values beyond ±65504 overflow (unscaled AMP gradients rarely get there)."""

    wire_dtype = torch.float16


class BF16Compressor(NoneCompressor):
    """bfloat16 rounding with fp32 range, carried in fp32 (see the module docstring for why)."""

    @classmethod
    def compress(cls, tensor: torch.Tensor):
        ctx = (tensor.dtype, _is_channels_last(tensor))
        out = tensor
        if tensor.is_floating_point() and tensor.dtype != torch.bfloat16:
            out = out.to(torch.bfloat16).to(torch.float32)
        return out.contiguous(), ctx


COMPRESSORS = {"none": NoneCompressor, "fp16": FP16Compressor, "bf16": BF16Compressor}


def get(name: str):
    return COMPRESSORS[name]
