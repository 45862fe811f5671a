"""Host-side helpers of the KDA Triton kernels (the size/launch helpers are the gated delta rule's)."""

from __future__ import annotations

import torch

from ..gated_delta_rule.utils import check_launchable, next_power_of_2
from .naive import prepare_inputs

__all__ = ["MAX_HEAD_DIM", "check_launchable", "check_triton_inputs", "next_power_of_2"]

MAX_HEAD_DIM = 128


def check_triton_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens):
    """Shapes checked, defaults filled, everything made contiguous for the kernels.

    Returns (q, k, v, g, beta, scale, N, initial_state fp32 or None, cu_seqlens int64 or None).
    """
    scale, N = prepare_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton kernels take fp32, bf16 or fp16 inputs, got {q.dtype}")
    K, V = k.shape[-1], v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"the KDA Triton kernels support head dims up to {MAX_HEAD_DIM}, got K={K}, V={V}")
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int64).contiguous()
    return q, k, v, g, beta, scale, N, initial_state, cu_seqlens
