"""Host-side helpers of the Mamba2 SSD Triton kernels: the reference's checks, launch sizes, contiguous fp32 params.

The size/launch helpers are the gated delta rule's (`check_launchable`, `next_power_of_2`); the shape checks and
their messages are the torch reference's (`naive.py`), so both backends refuse the same inputs the same way.
"""

from __future__ import annotations

import math

import torch

from ..gated_delta_rule.utils import check_launchable, next_power_of_2
from .naive import _check_dt_limit, _check_per_head, resolve_head_to_group

__all__ = ["MAX_STATE_DIM", "check_launchable", "check_scan_inputs", "check_step_inputs", "next_power_of_2"]

MAX_STATE_DIM = 256  # N: a state row [N] of every head channel lives in registers

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in _DTYPES:
        raise TypeError(f"the Triton SSD kernels take fp32, bf16 or fp16 inputs, got {x.dtype} (use backend='torch')")


def _per_head(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device=device, dtype=torch.float32).contiguous()


def _common(x, A, D, dt_bias, head_to_group, dt_limit, H, G, N):
    _check_per_head("A", A, H)
    _check_per_head("D", D, H)
    _check_per_head("dt_bias", dt_bias, H)
    lo, hi = _check_dt_limit(dt_limit)
    groups = resolve_head_to_group(head_to_group, H, G, device=x.device).contiguous()
    _check_dtype(x)
    if N > MAX_STATE_DIM:
        raise ValueError(f"the Triton SSD kernels support state sizes up to N = {MAX_STATE_DIM}, got N={N}")
    limits = (lo if lo != -math.inf else None, hi if hi != math.inf else None)
    return groups, _per_head(A, x.device), _per_head(D, x.device), _per_head(dt_bias, x.device), limits


def check_scan_inputs(x, dt, A, B, C, head_to_group, chunk_size, D, dt_bias, dt_limit, initial_state):
    """The reference's checks; returns (x, dt, B, C contiguous, head_to_group long, A / D / dt_bias fp32 or None,
    (dt min or None, dt max or None), initial state fp32 contiguous or None)."""
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [Bt, T, H, P], got shape {tuple(x.shape)}")
    Bt, T, H, P = x.shape
    if dt.shape != (Bt, T, H):
        raise ValueError(f"dt must have shape [Bt, T, H] = {(Bt, T, H)} (one step per head), got {tuple(dt.shape)}")
    if B.dim() != 4 or B.shape[:2] != (Bt, T):
        raise ValueError(f"B must have shape [Bt, T, G, N] with [Bt, T] = {(Bt, T)}, got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"C {tuple(C.shape)} and B {tuple(B.shape)} must have the same shape [Bt, T, G, N]")
    G, N = B.shape[2], B.shape[3]
    if initial_state is not None and initial_state.shape != (Bt, H, P, N):
        raise ValueError(f"initial_state must have shape [Bt, H, P, N] = {(Bt, H, P, N)}, got "
                         f"{tuple(initial_state.shape)}")
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    groups, A, D, dt_bias, limits = _common(x, A, D, dt_bias, head_to_group, dt_limit, H, G, N)
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    return x, dt, B, C, groups, A, D, dt_bias, limits, initial_state


def check_step_inputs(state, x, dt, A, B, C, head_to_group, D, dt_bias, dt_limit):
    """The reference's checks; returns (state fp32, x, dt, B, C contiguous, head_to_group long,
    A / D / dt_bias fp32 or None, (dt min or None, dt max or None))."""
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [Bt, H, P] (one token), got shape {tuple(x.shape)}")
    Bt, H, P = x.shape
    if dt.shape != (Bt, H):
        raise ValueError(f"dt must have shape [Bt, H] = {(Bt, H)} (one step per head), got {tuple(dt.shape)}")
    if B.dim() != 3 or B.shape[0] != Bt:
        raise ValueError(f"B must have shape [Bt, G, N] with Bt = {Bt}, got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"C {tuple(C.shape)} and B {tuple(B.shape)} must have the same shape [Bt, G, N]")
    G, N = B.shape[1], B.shape[2]
    if state.shape != (Bt, H, P, N):
        raise ValueError(f"state must have shape [Bt, H, P, N] = {(Bt, H, P, N)}, got {tuple(state.shape)}")
    groups, A, D, dt_bias, limits = _common(x, A, D, dt_bias, head_to_group, dt_limit, H, G, N)
    state = state.to(torch.float32).contiguous()
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    return state, x, dt, B, C, groups, A, D, dt_bias, limits
