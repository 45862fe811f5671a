"""Host-side helpers of the Mamba2 SSD Triton kernels: the reference's checks, launch sizes, contiguous fp32 params.

The size/launch helpers are the gated delta rule's (`check_launchable`, `next_power_of_2`); the shape checks and
their messages are the torch reference's (`naive.py`), so both backends refuse the same inputs the same way.
"""

from __future__ import annotations

import math

import torch

from ..gated_delta_rule.utils import check_launchable, next_power_of_2
from .naive import _check_dt_limit, check_scan_shapes, check_step_shapes, resolve_head_to_group

__all__ = ["MAX_STATE_DIM", "check_launchable", "check_scan_inputs", "check_step_inputs", "next_power_of_2"]

MAX_STATE_DIM = 256  # N: a state row [N] of every head channel lives in registers

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in _DTYPES:
        raise TypeError(f"the Triton SSD kernels take fp32, bf16 or fp16 inputs, got {x.dtype} (use backend='torch')")


def _per_head(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device=device, dtype=torch.float32).contiguous()


def _common(x, A, D, dt_bias, head_to_group, dt_limit, H, G, N):
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
    _, _, H, _, G, N = check_scan_shapes(x, dt, A, B, C, chunk_size, D, dt_bias, initial_state)
    groups, A, D, dt_bias, limits = _common(x, A, D, dt_bias, head_to_group, dt_limit, H, G, N)
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    return x, dt, B, C, groups, A, D, dt_bias, limits, initial_state


def check_step_inputs(state, x, dt, A, B, C, head_to_group, D, dt_bias, dt_limit):
    """The reference's checks; returns (state fp32, x, dt, B, C contiguous, head_to_group long,
    A / D / dt_bias fp32 or None, (dt min or None, dt max or None))."""
    _, H, _, G, N = check_step_shapes(state, x, dt, A, B, C, D, dt_bias)
    groups, A, D, dt_bias, limits = _common(x, A, D, dt_bias, head_to_group, dt_limit, H, G, N)
    state = state.to(torch.float32).contiguous()
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    return state, x, dt, B, C, groups, A, D, dt_bias, limits
