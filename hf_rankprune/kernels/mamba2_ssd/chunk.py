"""Triton chunked Mamba2 SSD scan (prefill), forward only, with an explicit head->group map.

One program per (batch, head, block of BP head channels) walks the tokens of its sequence in chunks of BT tokens,
keeping its fp32 state block S [BP, N] in registers; B/C rows are read from group `head_to_group[head]` (no
gathered copies). Per chunk, with a_t = dt_t A_h and cA_t = a_1 + ... + a_t (cumulative from the chunk's start):

    y_t = exp(cA_t) C_t S^T                                          (the state entering the chunk)
        + sum_{s <= t} (C_t . B_s) exp(cA_t - cA_s) dt_s x_s          (within the chunk, causal mask)
        + D_h x_t
    S  <- exp(cA_last) S + sum_s exp(cA_last - cA_s) dt_s x_s B_s^T

dt is discretised where it is loaded (dt + dt_bias, softplus, dt_limit clamp). The decay exponents are masked
before `exp` (with dt >= 0, the default dt_limit, they are all <= 0). The chunking is the kernel's own
(BT = 64 tokens, 32 for N > 128): the scan does not depend on it beyond rounding, so `chunk_size` is only
validated, as the reference does. Simple rather than fast (mamba_ssm's `mamba_chunk_scan_combined` is the fast,
multi-kernel design). On NVIDIA GPUs the matmuls use IEEE fp32 for fp32 inputs and TF32 for bf16/fp16 inputs.
Gradients: the dispatcher (`hf_rankprune.kernels`) routes calls that need them to the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_launchable, check_scan_inputs, next_power_of_2

__all__ = ["ssd_chunk_scan_fwd"]


@triton.jit
def _discretize_dt(b_dt, bias, DT_SOFTPLUS: tl.constexpr, USE_DT_MIN: tl.constexpr, dt_min,
                   USE_DT_MAX: tl.constexpr, dt_max):
    """dt + bias, softplus (torch's: x above 20, else log1p(exp(x))), clamped to [dt_min, dt_max], in fp32."""
    b_dt = b_dt + bias
    if DT_SOFTPLUS:
        b_u = tl.exp(tl.minimum(b_dt, 20.0))
        b_w = 1.0 + b_u
        # log1p(u) without cancellation: log(w) * u / (w - 1), or u when w rounds to 1
        b_log1p = tl.where(b_w == 1.0, b_u, tl.log(b_w) * (b_u / tl.where(b_w == 1.0, 1.0, b_w - 1.0)))
        b_dt = tl.where(b_dt > 20.0, b_dt, b_log1p)
    if USE_DT_MIN:
        b_dt = tl.maximum(b_dt, dt_min)
    if USE_DT_MAX:
        b_dt = tl.minimum(b_dt, dt_max)
    return b_dt


@triton.jit
def _ssd_chunk_scan_fwd_kernel(
    x, dt, A, B, C, h2g, D, dt_bias, y, h0, ht, dt_min, dt_max, T,
    H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    USE_DT_MIN: tl.constexpr, USE_DT_MAX: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = tl.load(h2g + i_h).to(tl.int64)
    bos = i_b.to(tl.int64) * T

    o_i = tl.arange(0, BT)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p = o_p < P
    m_n = o_n < N
    m_s = m_p[:, None] & m_n[None, :]
    m_causal = o_i[:, None] >= o_i[None, :]
    p_state = i_bh.to(tl.int64) * P * N + o_p[:, None] * N + o_n[None, :]

    b_A = tl.load(A + i_h).to(tl.float32)
    b_bias = 0.0
    if HAS_DT_BIAS:
        b_bias = tl.load(dt_bias + i_h).to(tl.float32)
    b_D = 0.0
    if HAS_D:
        b_D = tl.load(D + i_h).to(tl.float32)

    b_s = tl.zeros([BP, BN], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_s += tl.load(h0 + p_state, mask=m_s, other=0.0)

    for i_t in range(0, tl.cdiv(T, BT)):
        rows = bos + i_t * BT + o_i
        m_t = i_t * BT + o_i < T
        m_tp = m_t[:, None] & m_p[None, :]
        m_tn = m_t[:, None] & m_n[None, :]
        # padded rows: dt = 0 (no decay, no write), x = B = C = 0
        b_dt = tl.load(dt + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_dt = _discretize_dt(b_dt, b_bias, DT_SOFTPLUS, USE_DT_MIN, dt_min, USE_DT_MAX, dt_max)
        b_dt = tl.where(m_t, b_dt, 0.0)
        b_cA = tl.cumsum(b_dt * b_A, axis=0)  # [BT]
        b_cA_last = tl.sum(b_dt * b_A, axis=0)

        p_x = x + (rows[:, None] * H + i_h) * P + o_p[None, :]
        b_x = tl.load(p_x, mask=m_tp, other=0.0).to(tl.float32)  # [BT, BP]
        p_bc = (rows[:, None] * G + i_g) * N + o_n[None, :]
        b_B = tl.load(B + p_bc, mask=m_tn, other=0.0).to(tl.float32)  # [BT, BN]
        b_C = tl.load(C + p_bc, mask=m_tn, other=0.0).to(tl.float32)

        # the state entering the chunk, read by C and decayed to each token
        b_y = tl.dot(b_C, tl.trans(b_s), input_precision=DOT_PRECISION) * tl.exp(b_cA)[:, None]
        # within the chunk: (C_t . B_s) exp(cA_t - cA_s) dt_s for s <= t
        b_seg = tl.where(m_causal, b_cA[:, None] - b_cA[None, :], 0.0)
        b_G = tl.dot(b_C, tl.trans(b_B), input_precision=DOT_PRECISION)
        b_G = tl.where(m_causal, b_G * tl.exp(b_seg) * b_dt[None, :], 0.0)
        b_y += tl.dot(b_G, b_x, input_precision=DOT_PRECISION)
        if HAS_D:
            b_y += b_D * b_x
        tl.store(y + (rows[:, None] * H + i_h) * P + o_p[None, :], b_y, mask=m_tp)

        # the state leaving the chunk
        b_xw = b_x * (b_dt * tl.exp(b_cA_last - b_cA))[:, None]  # [BT, BP]
        b_s = b_s * tl.exp(b_cA_last) + tl.dot(tl.trans(b_xw), b_B, input_precision=DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(ht + p_state, b_s, mask=m_s)


def ssd_chunk_scan_fwd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    head_to_group: torch.Tensor | None = None,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton chunked SSD scan; arguments and results as `hf_rankprune.kernels.ssd_chunk_scan` (y fp32 [Bt, T, H, P],
    final state fp32 [Bt, H, P, N] or None). `chunk_size` is validated but the kernel picks its own chunks.

    Forward only (no autograd graph); use the dispatcher for differentiable calls.
    """
    x, dt, B, C, h2g, A, D, dt_bias, (dt_min, dt_max), h0 = check_scan_inputs(
        x, dt, A, B, C, head_to_group, chunk_size, D, dt_bias, dt_limit, initial_state)
    check_launchable(_ssd_chunk_scan_fwd_kernel, x)
    Bt, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    BN = max(next_power_of_2(N), 16)
    BT = 64 if BN <= 128 else 32
    BP = min(max(next_power_of_2(P), 16), 64 if BN <= 128 else 32)
    y = x.new_empty(Bt, T, H, P, dtype=torch.float32)
    ht = x.new_empty(Bt, H, P, N, dtype=torch.float32) if output_final_state else None
    if T > 0 and Bt * H * P > 0:
        _ssd_chunk_scan_fwd_kernel[(triton.cdiv(P, BP), Bt * H)](
            x, dt, A, B, C, h2g, D, dt_bias, y, h0, ht,
            0.0 if dt_min is None else dt_min, 0.0 if dt_max is None else dt_max, T,
            H=H, G=G, P=P, N=N, BT=BT, BP=BP, BN=BN,
            HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
            USE_DT_MIN=dt_min is not None, USE_DT_MAX=dt_max is not None,
            USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=output_final_state,
            DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            num_warps=4 if BP * BN <= 32 * 64 else 8,
        )
    elif output_final_state:
        ht.copy_(h0 if h0 is not None else torch.zeros_like(ht))
    return y, ht
