"""Host-side helpers shared by the Triton kernels (imports triton only for `next_power_of_2`-like sizes)."""

from __future__ import annotations

import torch

from .naive import prepare_inputs

__all__ = ["check_launchable", "check_triton_inputs", "prepare_chunk_indices", "next_power_of_2"]


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def check_triton_inputs(q, k, v, g, beta, value_to_key, scale, initial_state, cu_seqlens):
    """Shapes checked, defaults filled, everything made contiguous for the kernels.

    Returns (q, k, v, g, beta, value_to_key long on device, scale, N, initial_state fp32 or None, cu_seqlens int64).
    """
    value_to_key, scale, N = prepare_inputs(q, k, v, g, beta, value_to_key, scale, initial_state, cu_seqlens)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton kernels take fp32, bf16 or fp16 inputs, got {q.dtype}")
    if k.shape[-1] > 256:
        raise ValueError(f"the Triton kernels support head dims up to 256, got K={k.shape[-1]}")
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    value_to_key = value_to_key.contiguous()
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int64).contiguous()
    return q, k, v, g, beta, value_to_key, scale, N, initial_state, cu_seqlens


def prepare_chunk_indices(cu_seqlens: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed sequences: (chunk_indices [NT, 2] = (sequence, chunk in sequence), chunk_offsets [N + 1])."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    num_chunks = (lengths + chunk_size - 1) // chunk_size
    chunk_offsets = torch.cat([num_chunks.new_zeros(1), num_chunks.cumsum(0)])
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), num_chunks)
    within = torch.arange(int(chunk_offsets[-1]), device=cu_seqlens.device) - chunk_offsets[seq]
    chunk_indices = torch.stack([seq, within], dim=1).to(torch.int64).contiguous()
    return chunk_indices, chunk_offsets.to(torch.int64).contiguous()


def check_launchable(kernel, x: torch.Tensor) -> None:
    """Fail clearly when a compiled (non-interpreted) Triton kernel is asked to run on CPU tensors."""
    if x.is_cuda or type(kernel).__name__ == "InterpretedFunction":
        return
    raise RuntimeError(
        "the Triton backend was asked for CPU tensors, but Triton has no CPU backend: set TRITON_INTERPRET=1 "
        "before hf_rankprune's Triton kernel modules are first imported (fp32 only, slow; for tests), "
        "or use backend='torch' / 'auto'"
    )
