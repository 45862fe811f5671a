"""Triton Mamba2 SSD step (one decoding token), forward only, with an explicit head->group map.

One program per (batch, head, block of BP head channels) loads its state block S [BP, N] (fp32), discretises dt
(dt + dt_bias, softplus, dt_limit clamp: the chunk kernel's helper) and computes

    S' = exp(dt A_h) S + dt x B_{g(h)}^T,    y = S' C_{g(h)} + D_h x,

reading B/C of group g(h) = `head_to_group[h]`. The new state goes to a new tensor (`state` is not modified: the
caller writes its cache), y in x's dtype. Gradients: the dispatcher (`hf_rankprune.kernels`) routes calls that
need them to the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import _discretize_dt
from .utils import check_launchable, check_step_inputs, next_power_of_2

__all__ = ["ssd_step_fwd"]


@triton.jit
def _ssd_step_fwd_kernel(
    state, x, dt, A, B, C, h2g, D, dt_bias, y, new_state, dt_min, dt_max,
    H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    BP: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    USE_DT_MIN: tl.constexpr, USE_DT_MAX: tl.constexpr,
):
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = tl.load(h2g + i_h).to(tl.int64)
    i_bh = i_bh.to(tl.int64)

    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p = o_p < P
    m_n = o_n < N
    m_s = m_p[:, None] & m_n[None, :]
    p_state = i_bh * P * N + o_p[:, None] * N + o_n[None, :]

    b_bias = 0.0
    if HAS_DT_BIAS:
        b_bias = tl.load(dt_bias + i_h).to(tl.float32)
    b_dt = tl.load(dt + i_bh).to(tl.float32)  # dt [Bt, H]: flat index b * H + h
    b_dt = _discretize_dt(b_dt, b_bias, DT_SOFTPLUS, USE_DT_MIN, dt_min, USE_DT_MAX, dt_max)
    b_A = tl.load(A + i_h).to(tl.float32)

    b_x = tl.load(x + i_bh * P + o_p, mask=m_p, other=0.0).to(tl.float32)
    p_bc = (i_b.to(tl.int64) * G + i_g) * N + o_n
    b_B = tl.load(B + p_bc, mask=m_n, other=0.0).to(tl.float32)
    b_C = tl.load(C + p_bc, mask=m_n, other=0.0).to(tl.float32)

    b_s = tl.load(state + p_state, mask=m_s, other=0.0)
    b_s = b_s * tl.exp(b_dt * b_A) + (b_x * b_dt)[:, None] * b_B[None, :]
    tl.store(new_state + p_state, b_s, mask=m_s)
    b_y = tl.sum(b_s * b_C[None, :], axis=1)
    if HAS_D:
        b_y += tl.load(D + i_h).to(tl.float32) * b_x
    tl.store(y + i_bh * P + o_p, b_y.to(y.dtype.element_ty), mask=m_p)


def ssd_step_fwd(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    head_to_group: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton SSD step; arguments and results as `hf_rankprune.kernels.ssd_step` (y [Bt, H, P] in x's dtype, new
    state fp32 [Bt, H, P, N]; `state` is not modified).

    Forward only (no autograd graph); use the dispatcher for differentiable calls.
    """
    state, x, dt, B, C, h2g, A, D, dt_bias, (dt_min, dt_max) = check_step_inputs(
        state, x, dt, A, B, C, head_to_group, D, dt_bias, dt_limit)
    check_launchable(_ssd_step_fwd_kernel, x)
    Bt, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    BN = max(next_power_of_2(N), 16)
    BP = min(max(next_power_of_2(P), 16), 64 if BN <= 128 else 32)
    y = torch.empty_like(x)
    new_state = torch.empty_like(state)
    if Bt * H * P > 0:
        _ssd_step_fwd_kernel[(triton.cdiv(P, BP), Bt * H)](
            state, x, dt, A, B, C, h2g, D, dt_bias, y, new_state,
            0.0 if dt_min is None else dt_min, 0.0 if dt_max is None else dt_max,
            H=H, G=G, P=P, N=N, BP=BP, BN=BN,
            HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
            USE_DT_MIN=dt_min is not None, USE_DT_MAX=dt_max is not None,
            num_warps=4 if BP * BN <= 64 * 64 else 8,
        )
    return y, new_state
