"""Triton chunked gated delta rule (prefill), forward only, with an explicit value->key head map.

Design after flash-linear-attention's `chunk_gated_delta_rule` (chunks of BT = 64 tokens, UT transform,
then a sequential pass over chunks for the states), written here in three kernels:

1. `_chunk_wu_kernel` (chunk, value head): chunk-local cumulative log decay `gc`, the strictly lower
   matrix A_ij = beta_i k_i.k_j exp(gc_i - gc_j), its unit-lower inverse T = (I + A)^-1 by forward
   substitution, and w = T (beta exp(gc) k), u = T (beta v).
2. `_chunk_h_kernel` (sequence, value head, V block): walks the chunks in order with the fp32 state
   S [K, BV]; stores the state entering each chunk, v_new = u - w S, and
   S <- exp(gc_last) S + (exp(gc_last - gc) k)^T v_new.
3. `_chunk_o_kernel` (chunk, value head, V block): o = (q exp(gc)) S_chunk + tril(q k^T exp(gc_i - gc_j)) v_new.

q/k are read from key head `value_to_key[value head]` in every kernel (no gathered copies); L2 norm of
q/k is recomputed where they are loaded. Intermediates (w, u, v_new, per-chunk states) are fp32. On
NVIDIA GPUs the matmuls use IEEE fp32 for fp32 inputs (to match the reference to ~1e-5) and TF32 for
bf16/fp16 inputs. Gradients: the dispatcher routes calls that need them to the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_launchable, check_triton_inputs, next_power_of_2, prepare_chunk_indices

__all__ = ["chunk_gated_delta_rule_fwd"]

CHUNK_SIZE = 64


@triton.jit
def _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, IS_VARLEN: tl.constexpr):
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
        i_t = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        seq_len = eos - bos
    else:
        i_n = i_b.to(tl.int64)
        bos = i_n * T
        seq_len = T
    return i_n, i_t, bos, seq_len


@triton.jit
def _load_rows(ptr, rows, head, NH: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, m_t, L2NORM: tl.constexpr):
    """Rows [BT, BD] (fp32) of head `head` of a [*, T, NH, D] tensor; optionally L2-normalised."""
    o_d = tl.arange(0, BD)
    p = ptr + (rows[:, None] * NH + head) * D + o_d[None, :]
    b_x = tl.load(p, mask=m_t[:, None] & (o_d < D)[None, :], other=0.0).to(tl.float32)
    if L2NORM:
        b_x = b_x * tl.rsqrt(tl.sum(b_x * b_x, axis=1) + 1e-6)[:, None]
    return b_x


@triton.jit
def _chunk_wu_kernel(
    k, v, g, beta, v2k, gc, w, u, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_hv = i_bh // HV, i_bh % HV
    i_h = tl.load(v2k + i_hv).to(tl.int64)
    i_n, i_t, bos, seq_len = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, IS_VARLEN)

    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < seq_len
    rows = bos + o_t

    b_g = tl.load(g + rows * HV + i_hv, mask=m_t, other=0.0).to(tl.float32)
    b_g = tl.cumsum(b_g, axis=0)
    tl.store(gc + rows * HV + i_hv, b_g, mask=m_t)
    b_beta = tl.load(beta + rows * HV + i_hv, mask=m_t, other=0.0).to(tl.float32)
    b_k = _load_rows(k, rows, i_h, H, K, BK, m_t, USE_L2NORM)
    b_v = _load_rows(v, rows, i_hv, HV, V, BV, m_t, False)

    # A = strictly lower part of (beta_i k_i . k_j) exp(gc_i - gc_j)
    m_lower = o_i[:, None] > o_i[None, :]
    b_A = tl.dot(b_k * b_beta[:, None], tl.trans(b_k), input_precision=DOT_PRECISION)
    b_A = tl.where(m_lower, b_A * tl.exp(tl.where(m_lower, b_g[:, None] - b_g[None, :], 0.0)), 0.0)
    # T = (I + A)^-1, unit lower triangular: row i = e_i - sum_{j<i} A_ij T_j
    b_T = tl.where(o_i[:, None] == o_i[None, :], 1.0, 0.0)
    for i in range(1, BT):
        b_a = tl.sum(tl.where((o_i == i)[:, None], b_A, 0.0), axis=0)
        b_row = tl.where(o_i == i, 1.0, 0.0) - tl.sum(b_a[:, None] * b_T, axis=0)
        b_T = tl.where((o_i == i)[:, None], b_row[None, :], b_T)

    b_w = tl.dot(b_T, b_k * (b_beta * tl.exp(b_g))[:, None], input_precision=DOT_PRECISION)
    b_u = tl.dot(b_T, b_v * b_beta[:, None], input_precision=DOT_PRECISION)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    tl.store(w + (rows[:, None] * HV + i_hv) * K + o_k[None, :], b_w, mask=m_t[:, None] & (o_k < K)[None, :])
    tl.store(u + (rows[:, None] * HV + i_hv) * V + o_v[None, :], b_u, mask=m_t[:, None] & (o_v < V)[None, :])


@triton.jit
def _chunk_h_kernel(
    k, w, u, gc, v2k, h, v_new, h0, ht, cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
    USE_L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = tl.load(v2k + i_hv).to(tl.int64)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        seq_len = eos - bos
        boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        seq_len = T
        boh = i_n.to(tl.int64) * tl.cdiv(T, BT)
    NT = tl.cdiv(seq_len, BT)

    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + p_state, mask=m_h, other=0.0)

    for i_t in range(0, NT):
        tl.store(h + ((boh + i_t) * HV + i_hv) * K * V + p_state, b_h, mask=m_h)
        o_t = i_t * BT + o_i
        m_t = o_t < seq_len
        rows = bos + o_t
        m_tv = m_t[:, None] & m_v[None, :]
        b_w = tl.load(w + (rows[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_u = tl.load(u + (rows[:, None] * HV + i_hv) * V + o_v[None, :], mask=m_tv, other=0.0)
        b_vn = b_u - tl.dot(b_w, b_h, input_precision=DOT_PRECISION)
        tl.store(v_new + (rows[:, None] * HV + i_hv) * V + o_v[None, :], b_vn, mask=m_tv)

        last = tl.minimum(i_t * BT + BT, seq_len) - 1
        b_g_last = tl.load(gc + (bos + last) * HV + i_hv)
        b_g = tl.load(gc + rows * HV + i_hv, mask=m_t, other=0.0)
        b_k = _load_rows(k, rows, i_h, H, K, BK, m_t, USE_L2NORM)
        b_k = b_k * tl.exp(b_g_last - b_g)[:, None]
        b_h = b_h * tl.exp(b_g_last) + tl.dot(tl.trans(b_k), b_vn, input_precision=DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_state, b_h, mask=m_h)


@triton.jit
def _chunk_o_kernel(
    q, k, gc, v2k, h, v_new, o, cu_seqlens, chunk_indices, chunk_offsets, scale, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_hv = i_bh // HV, i_bh % HV
    i_h = tl.load(v2k + i_hv).to(tl.int64)
    i_n, i_t, bos, seq_len = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, IS_VARLEN)
    if IS_VARLEN:
        boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        boh = i_n * tl.cdiv(T, BT)

    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < seq_len
    rows = bos + o_t
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]

    b_q = _load_rows(q, rows, i_h, H, K, BK, m_t, USE_L2NORM) * scale
    b_k = _load_rows(k, rows, i_h, H, K, BK, m_t, USE_L2NORM)
    b_g = tl.load(gc + rows * HV + i_hv, mask=m_t, other=0.0)
    b_h = tl.load(h + ((boh + i_t) * HV + i_hv) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=(o_k < K)[:, None] & m_v[None, :], other=0.0)
    b_vn = tl.load(v_new + (rows[:, None] * HV + i_hv) * V + o_v[None, :], mask=m_tv, other=0.0)

    b_o = tl.dot(b_q * tl.exp(b_g)[:, None], b_h, input_precision=DOT_PRECISION)
    m_causal = o_i[:, None] >= o_i[None, :]
    b_A = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
    b_A = tl.where(m_causal, b_A * tl.exp(tl.where(m_causal, b_g[:, None] - b_g[None, :], 0.0)), 0.0)
    b_o += tl.dot(b_A, b_vn, input_precision=DOT_PRECISION)
    tl.store(o + (rows[:, None] * HV + i_hv) * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


def chunk_gated_delta_rule_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    value_to_key: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton chunked forward; arguments as `hf_rankprune.kernels.chunk_gated_delta_rule`.

    Forward only (no autograd graph); use the dispatcher for differentiable calls.
    """
    q, k, v, g, beta, v2k, scale, N, h0, cu_seqlens = check_triton_inputs(
        q, k, v, g, beta, value_to_key, scale, initial_state, cu_seqlens)
    check_launchable(_chunk_wu_kernel, q)
    B, T, H, K = k.shape
    HV, V = v.shape[2:]
    BT = CHUNK_SIZE
    BK = max(next_power_of_2(K), 16)
    BVF = max(next_power_of_2(V), 16)
    BV = min(BVF, 32 if BK > 128 else 64)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    if cu_seqlens is not None:
        chunk_indices, chunk_offsets = prepare_chunk_indices(cu_seqlens, BT)
        NT, NB, total_chunks = chunk_indices.shape[0], 1, chunk_indices.shape[0]
    else:
        chunk_indices = chunk_offsets = None
        NT, NB = triton.cdiv(T, BT), B
        total_chunks = B * NT

    o = torch.empty_like(v, dtype=q.dtype)
    ht = q.new_empty(N, HV, K, V, dtype=torch.float32) if output_final_state else None
    if T == 0 or HV == 0 or N == 0:
        if ht is not None:
            ht.copy_(h0 if h0 is not None else torch.zeros_like(ht))
        return o, ht

    f32 = dict(device=q.device, dtype=torch.float32)
    gc = torch.empty(B, T, HV, **f32)
    w = torch.empty(B, T, HV, K, **f32)
    u = torch.empty(B, T, HV, V, **f32)
    v_new = torch.empty(B, T, HV, V, **f32)
    h = torch.empty(total_chunks, HV, K, V, **f32)
    common = dict(H=H, HV=HV, K=K, V=V, BT=BT, BK=BK, USE_L2NORM=use_qk_l2norm_in_kernel,
                  IS_VARLEN=cu_seqlens is not None, DOT_PRECISION=precision)

    _chunk_wu_kernel[(NT, NB * HV)](
        k, v, g, beta, v2k, gc, w, u, cu_seqlens, chunk_indices, T, BV=BVF, **common,
        num_warps=4 if BK * BVF <= 64 * 64 else 8,
    )
    _chunk_h_kernel[(triton.cdiv(V, BV), N * HV)](
        k, w, u, gc, v2k, h, v_new, h0, ht, cu_seqlens, chunk_offsets, T, BV=BV,
        USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=output_final_state, **common,
        num_warps=4,
    )
    _chunk_o_kernel[(triton.cdiv(V, BV), NT, NB * HV)](
        q, k, gc, v2k, h, v_new, o, cu_seqlens, chunk_indices, chunk_offsets, scale, T, BV=BV, **common,
        num_warps=4,
    )
    return o, ht
