"""Triton fused recurrent Kimi delta attention (decoding), forward only.

One program per (sequence, head, V block) keeps its state block [K, BV] in fp32 registers and walks the
tokens: S <- diag(exp(g_t)) S (g_t: one log decay per key channel), S <- S + k_t (beta_t (v_t - S^T k_t))^T,
o_t = S^T (q_t * scale). Gradients: the dispatcher (`hf_rankprune.kernels`) routes calls that need them to
the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_launchable, check_triton_inputs, next_power_of_2

__all__ = ["fused_recurrent_kimi_delta_attention_fwd"]


@triton.jit
def _fused_recurrent_kda_fwd_kernel(
    q, k, v, g, beta, o, h0, ht, cu_seqlens, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
    USE_L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr,
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

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_k[:, None] & m_v[None, :]

    p_q = q + (bos * H + i_h) * K + o_k
    p_k = k + (bos * H + i_h) * K + o_k
    p_g = g + (bos * H + i_h) * K + o_k
    p_v = v + (bos * H + i_h) * V + o_v
    p_o = o + (bos * H + i_h) * V + o_v
    p_beta = beta + bos * H + i_h

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + p_state, mask=m_h, other=0.0).to(tl.float32)

    for _ in range(0, seq_len):
        b_q = tl.load(p_q, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(p_g, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0.0).to(tl.float32)
        b_beta = tl.load(p_beta).to(tl.float32)
        if USE_L2NORM:  # KDA's form: x / sqrt(sum(x^2) + 1e-6)
            b_q = b_q / tl.sqrt(tl.sum(b_q * b_q, axis=0) + 1e-6)
            b_k = b_k / tl.sqrt(tl.sum(b_k * b_k, axis=0) + 1e-6)
        b_q = b_q * scale
        b_h *= tl.exp(b_g)[:, None]
        b_v = b_beta * (b_v - tl.sum(b_h * b_k[:, None], axis=0))
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0)
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)

        p_q += H * K
        p_k += H * K
        p_g += H * K
        p_v += H * V
        p_o += H * V
        p_beta += H

    if STORE_FINAL_STATE:
        tl.store(ht + p_state, b_h, mask=m_h)


def fused_recurrent_kimi_delta_attention_fwd(
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
    """Triton recurrent forward; arguments as `hf_rankprune.kernels.fused_recurrent_kimi_delta_attention`.

    Forward only (no autograd graph); use the dispatcher for differentiable calls.
    """
    q, k, v, g, beta, scale, N, h0, cu_seqlens = check_triton_inputs(
        q, k, v, g, beta, scale, initial_state, cu_seqlens)
    check_launchable(_fused_recurrent_kda_fwd_kernel, q)
    B, T, H, K = k.shape
    V = v.shape[-1]
    BK = max(next_power_of_2(K), 16)
    BV = min(max(next_power_of_2(V), 16), 64)
    o = torch.empty_like(v, dtype=q.dtype)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    if T > 0 and N * H > 0:
        _fused_recurrent_kda_fwd_kernel[(triton.cdiv(V, BV), N * H)](
            q, k, v, g, beta, o, h0, ht, cu_seqlens, scale, T,
            H=H, K=K, V=V, BK=BK, BV=BV,
            USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=output_final_state,
            USE_L2NORM=use_qk_l2norm_in_kernel, IS_VARLEN=cu_seqlens is not None,
            num_warps=4 if BK * BV <= 4096 else 8,
        )
    elif output_final_state:
        ht.copy_(h0 if h0 is not None else torch.zeros_like(ht))
    return o, ht
