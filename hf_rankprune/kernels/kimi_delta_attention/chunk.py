"""Triton chunked Kimi delta attention (prefill), forward only.

One program per (sequence, head, V block) walks the chunks of BT = 64 tokens of its sequence in order,
keeping the fp32 state block S [K, BV] in registers. Per chunk, with G the cumulative log decay of each
key channel from the chunk's start (exponents below are all <= 0, masked before exp):

1. A_ij = beta_i sum_c k_ic k_jc exp(G_ic - G_jc) (j < i) and P_ij = sum_c q_ic k_jc exp(G_ic - G_jc)
   (j <= i), built one column j at a time (the per-channel decay rules out a single q k^T product);
2. T = (I + A)^-1 by forward substitution, w = T (beta k exp(G)), u = T (beta v);
3. v_new = u - w S, o = (q exp(G)) S + P v_new, S <- diag(exp(G_last)) S + (k exp(G_last - G))^T v_new.

The UT transform is recomputed by each V block (V <= 128: at most two). This favours simplicity over
speed (flash-linear-attention's `chunk_kda` is the fast design: sub-chunked, split over several kernels).
q/k L2 norm (KDA form, x / sqrt(sum(x^2) + 1e-6)) is applied where they are loaded. On NVIDIA GPUs the
matmuls use IEEE fp32 for fp32 inputs and TF32 for bf16/fp16 inputs. Gradients: the dispatcher routes
calls that need them to the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..gated_delta_rule.chunk import _load_rows
from .utils import check_launchable, check_triton_inputs, next_power_of_2

__all__ = ["chunk_kimi_delta_attention_fwd"]

CHUNK_SIZE = 64


@triton.jit
def _kda_l2norm(b_x):
    """Rows of b_x [BT, BD] divided by sqrt(sum(x^2) + 1e-6), as KDA normalises q/k."""
    return b_x / tl.sqrt(tl.sum(b_x * b_x, axis=1) + 1e-6)[:, None]


@triton.jit
def _chunk_kda_fwd_kernel(
    q, k, v, g, beta, o, h0, ht, cu_seqlens, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
    USE_L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        seq_len = eos - bos
    else:
        bos = i_n.to(tl.int64) * T
        seq_len = T
    NT = tl.cdiv(seq_len, BT)

    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_h = (o_k < K)[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    m_strict = o_i[:, None] > o_i[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + p_state, mask=m_h, other=0.0)

    for i_t in range(0, NT):
        o_t = i_t * BT + o_i
        m_t = o_t < seq_len
        rows = bos + o_t
        m_tv = m_t[:, None] & m_v[None, :]
        n_valid = tl.minimum(seq_len - i_t * BT, BT)
        # padded rows and channels load as zeros: zero k/beta/g leave the state as it is
        b_q = _load_rows(q, rows, i_h, H, K, BK, m_t, False)
        b_k = _load_rows(k, rows, i_h, H, K, BK, m_t, False)
        if USE_L2NORM:
            b_q = _kda_l2norm(b_q)
            b_k = _kda_l2norm(b_k)
        b_q = b_q * scale
        b_gc = tl.cumsum(_load_rows(g, rows, i_h, H, K, BK, m_t, False), axis=0)
        b_v = tl.load(v + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_kb = b_k * b_beta[:, None]

        # column j of A and P: rows i >= j of (x_i * exp(G_i - G_j)) . k_j
        b_A = tl.zeros([BT, BT], dtype=tl.float32)
        b_P = tl.zeros([BT, BT], dtype=tl.float32)
        for j in range(0, n_valid):
            m_j = o_i == j
            b_kj = tl.sum(tl.where(m_j[:, None], b_k, 0.0), axis=0)
            b_gj = tl.sum(tl.where(m_j[:, None], b_gc, 0.0), axis=0)
            m_ij = (o_i >= j)[:, None]
            b_kd = tl.where(m_ij, tl.exp(tl.where(m_ij, b_gc - b_gj[None, :], 0.0)) * b_kj[None, :], 0.0)
            b_A = tl.where(m_j[None, :], tl.sum(b_kb * b_kd, axis=1)[:, None], b_A)
            b_P = tl.where(m_j[None, :], tl.sum(b_q * b_kd, axis=1)[:, None], b_P)
        b_A = tl.where(m_strict, b_A, 0.0)
        # T = (I + A)^-1, unit lower triangular: row i = e_i - sum_{j<i} A_ij T_j
        b_T = tl.where(o_i[:, None] == o_i[None, :], 1.0, 0.0)
        for i in range(1, n_valid):
            b_a = tl.sum(tl.where((o_i == i)[:, None], b_A, 0.0), axis=0)
            b_row = tl.where(o_i == i, 1.0, 0.0) - tl.sum(b_a[:, None] * b_T, axis=0)
            b_T = tl.where((o_i == i)[:, None], b_row[None, :], b_T)

        b_w = tl.dot(b_T, b_kb * tl.exp(b_gc), input_precision=DOT_PRECISION)
        b_u = tl.dot(b_T, b_v * b_beta[:, None], input_precision=DOT_PRECISION)
        b_vn = b_u - tl.dot(b_w, b_h, input_precision=DOT_PRECISION)
        b_o = tl.dot(b_q * tl.exp(b_gc), b_h, input_precision=DOT_PRECISION)
        b_o += tl.dot(b_P, b_vn, input_precision=DOT_PRECISION)
        tl.store(o + (rows[:, None] * H + i_h) * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)

        # G of the last row (padded rows have g = 0, so row BT - 1 holds it)
        b_glast = tl.sum(tl.where((o_i == BT - 1)[:, None], b_gc, 0.0), axis=0)
        b_kdecay = b_k * tl.exp(b_glast[None, :] - b_gc)
        b_h = b_h * tl.exp(b_glast)[:, None] + tl.dot(tl.trans(b_kdecay), b_vn, input_precision=DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(ht + p_state, b_h, mask=m_h)


def chunk_kimi_delta_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton chunked forward; arguments as `hf_rankprune.kernels.chunk_kimi_delta_attention`.

    Forward only (no autograd graph); use the dispatcher for differentiable calls.
    """
    q, k, v, g, beta, scale, N, h0, cu_seqlens = check_triton_inputs(
        q, k, v, g, beta, scale, initial_state, cu_seqlens)
    check_launchable(_chunk_kda_fwd_kernel, q)
    B, T, H, K = k.shape
    V = v.shape[-1]
    BK = max(next_power_of_2(K), 16)
    BV = min(max(next_power_of_2(V), 16), 64)
    o = torch.empty_like(v, dtype=q.dtype)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    if T > 0 and N * H > 0:
        _chunk_kda_fwd_kernel[(triton.cdiv(V, BV), N * H)](
            q, k, v, g, beta, o, h0, ht, cu_seqlens, scale, T,
            H=H, K=K, V=V, BT=CHUNK_SIZE, BK=BK, BV=BV,
            USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=output_final_state,
            USE_L2NORM=use_qk_l2norm_in_kernel, IS_VARLEN=cu_seqlens is not None,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=4 if BK * BV <= 64 * 64 else 8,
        )
    elif output_final_state:
        ht.copy_(h0 if h0 is not None else torch.zeros_like(ht))
    return o, ht
