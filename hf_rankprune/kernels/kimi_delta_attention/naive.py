"""Torch reference of Kimi delta attention (KDA): the delta rule with a per-key-channel decay.

Two implementations with the signature of the public API (see `hf_rankprune.kernels`):

- `naive_chunk_kimi_delta_attention`: chunked (UT-transform) algorithm, chunk 64, the same algorithm as
  transformers' `chunk_kimi_delta_attention` (Kimi Linear); for prefill.
- `naive_recurrent_kimi_delta_attention`: token-by-token recurrence, as transformers'
  `recurrent_kimi_delta_attention`; for decoding (T of a few tokens).

Both are differentiable with autograd (this is the backward of every backend: the Triton kernels are
forward only). Math per token t of a head (q, k, v all have H heads; state S [K, V]):

    S <- diag(exp(g_t)) S;   S <- S + beta_t k_t (v_t - S^T k_t)^T;   o_t = S^T (q_t * scale)

with g_t in R^K the log decay of each key channel (<= 0). With `use_qk_l2norm_in_kernel`, q and k are
first normalised as KDA does, x / sqrt(sum(x^2) + 1e-6) (not the x * rsqrt(...) of the gated delta rule).
The state is computed in fp32 (fp64 if the inputs are fp64); the output is returned in the dtype of `q`.

This file is self-contained (torch and the standard library only): it is copied next to saved
checkpoints for `trust_remote_code` users. For the same reason it shares no code with
`gated_delta_rule/naive.py` (also copied on its own): the small sequence-packing helpers below are
deliberately duplicated from there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "l2norm",
    "naive_chunk_kimi_delta_attention",
    "naive_recurrent_kimi_delta_attention",
    "prepare_inputs",
]

L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = L2NORM_EPS) -> torch.Tensor:
    """`x / sqrt(sum(x^2) + eps)`, as KDA (fla's kda, transformers' Kimi Linear) normalises q/k."""
    return x / torch.sqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def prepare_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens):
    """Check shapes and fill defaults shared by every backend. Returns (scale, num_sequences)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D ([B, T, H, K] for q/k, [B, T, H, V] for v), got shape "
                             f"{tuple(x.shape)}")
    B, T, H, K = k.shape
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")
    if g.shape != k.shape:
        raise ValueError(f"g must have shape [B, T, H, K] = {tuple(k.shape)} (one log decay per key channel), "
                         f"got {tuple(g.shape)}")
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"v {tuple(v.shape)} must share [B, T, H] with k {tuple(k.shape)} (KDA has no head "
                         "grouping)")
    V = v.shape[3]
    if beta.shape != (B, T, H):
        raise ValueError(f"beta must have shape [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    if scale is None:
        scale = K**-0.5
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences packed along T), got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D tensor [N + 1] of cumulative sequence lengths")
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
            raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {cu_seqlens.tolist()}")
        if bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
            raise ValueError(f"cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None and initial_state.shape != (N, H, K, V):
        raise ValueError(f"initial_state must have shape [N, H, K, V] = {(N, H, K, V)}, got "
                         f"{tuple(initial_state.shape)}")
    return float(scale), N


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _to_heads_first(q, k, v, g, beta, use_qk_l2norm_in_kernel, dtype):
    """[B, T, H, d] -> [B, H, T, d] in `dtype`, q/k normalised (optional)."""
    q, k, v = (x.to(dtype) for x in (q, k, v))
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    return [x.transpose(1, 2).to(dtype) for x in (q, k, v, g, beta)]


# Duplicated from gated_delta_rule/naive.py on purpose: both reference files are copied next to checkpoints on
# their own, so neither may import the other.
def _pack_sequences(cu_seqlens: torch.Tensor, *xs: torch.Tensor):
    """Split [1, T, ...] packed tensors into a right-padded batch [N, Tmax, ...] (zero padding)."""
    bounds = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    out = []
    for x in xs:
        pieces = [x[0, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        out.append(torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True))
    return lengths, out


def _unpack_sequences(o: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    return torch.cat([o[i, :n] for i, n in enumerate(lengths)], dim=0).unsqueeze(0)


def _varlen(core, q, k, v, g, beta, cu_seqlens, **kwargs):
    """Run `core` on packed sequences: padded to a batch (zero g/beta/k leave the state unchanged)."""
    lengths, (q, k, v, g, beta) = _pack_sequences(cu_seqlens, q, k, v, g, beta)
    o, state = core(q, k, v, g, beta, **kwargs)
    return _unpack_sequences(o, lengths), state


def _decayed_scores(x: torch.Tensor, k: torch.Tensor, G: torch.Tensor, sub: int = 16) -> torch.Tensor:
    """M [..., C, C] with M_ab = sum_c x_ac k_bc exp(G_ac - G_bc) for b <= a, 0 above the diagonal.

    x [..., C, K] may carry extra leading dims over k and G [..., C, K] (broadcast). Rows are taken `sub` at a time:
    pairs inside a sub-block use the explicit [sub, sub, K] decay; earlier columns b < s (s: the sub-block's first row)
    factor through r = s - 1 as (x_a exp(G_a - G_r)) . (k_b exp(G_r - G_b)), a matmul whose two exponents are both
    <= 0 (G is non-increasing). No exponent is ever positive, so nothing overflows whatever the decay.
    """
    C = x.shape[-2]
    blocks = []
    for s in range(0, C, sub):
        e = min(s + sub, C)
        x_s, G_s, k_s = x[..., s:e, :], G[..., s:e, :], k[..., s:e, :]
        causal = torch.ones(e - s, e - s, dtype=torch.bool, device=x.device).tril()
        diff = (G_s.unsqueeze(-2) - G_s.unsqueeze(-3)).masked_fill(~causal[..., None], float("-inf"))
        row = [torch.einsum("...ac,...abc->...ab", x_s, diff.exp() * k_s.unsqueeze(-3))]
        if s > 0:
            G_r = G[..., s - 1:s, :]
            past = (k[..., :s, :] * (G_r - G[..., :s, :]).exp()).transpose(-1, -2)
            row.insert(0, (x_s * (G_s - G_r).exp()) @ past)
        if e < C:
            row.append(x_s.new_zeros(*row[0].shape[:-1], C - e))
        blocks.append(torch.cat(row, dim=-1))
    return torch.cat(blocks, dim=-2)


def _chunk_core(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel, chunk_size=64,
                chunk_state_callback=None):
    """Chunked KDA. Within a chunk, with G the cumulative log decay from the chunk's start (per key channel):

        A_ij = beta_i sum_c k_ic k_jc exp(G_ic - G_jc)   (j < i),   P_ij = sum_c q_ic k_jc exp(G_ic - G_jc)   (j <= i)
        u = (I + A)^-1 (beta v),   w = (I + A)^-1 (beta k exp(G)),   v_new = u - w S
        o = (q exp(G)) S + P v_new,   S <- diag(exp(G_last)) S + (k exp(G_last - G))^T v_new

    A and P come from `_decayed_scores` (only non-positive exponents), one chunk at a time to bound memory.
    """
    dtype = _state_dtype(q)
    B, T, H, K = k.shape
    V = v.shape[-1]
    q, k, v, g, beta = _to_heads_first(q, k, v, g, beta, use_qk_l2norm_in_kernel, dtype)
    q = q * scale
    C = chunk_size
    pad = (C - T % C) % C
    if pad:  # zero k, g, beta: padded tokens leave the state unchanged
        q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
        beta = F.pad(beta, (0, pad))
    NT = (T + pad) // C
    q, k, v, g = (x.reshape(B, H, NT, C, x.shape[-1]) for x in (q, k, v, g))
    beta = beta.reshape(B, H, NT, C, 1)
    G = g.cumsum(-2)
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    outs = []
    for i in range(NT):
        q_i, k_i, v_i, G_i, beta_i = q[:, :, i], k[:, :, i], v[:, :, i], G[:, :, i], beta[:, :, i]
        k_beta = k_i * beta_i
        A, P = _decayed_scores(torch.stack([k_beta, q_i]), k_i, G_i)
        A = A.masked_fill(~strict, 0)
        u = torch.linalg.solve_triangular(A, v_i * beta_i, upper=False, unitriangular=True)
        w = torch.linalg.solve_triangular(A, k_beta * G_i.exp(), upper=False, unitriangular=True)
        v_new = u - w @ state
        outs.append((q_i * G_i.exp()) @ state + P @ v_new)
        G_last = G_i[..., -1:, :]
        state = state * G_last.transpose(-1, -2).exp() + (k_i * (G_last - G_i).exp()).transpose(-1, -2) @ v_new
        if chunk_state_callback is not None:
            chunk_state_callback(i, state)
    if not outs:  # T == 0
        return v.new_zeros(B, 0, H, V), state
    o = torch.stack(outs, dim=2).reshape(B, H, NT * C, V)[:, :, :T]
    return o.transpose(1, 2), state


def _recurrent_core(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel):
    dtype = _state_dtype(q)
    B, T, H, K = k.shape
    V = v.shape[-1]
    q, k, v, g, beta = _to_heads_first(q, k, v, g, beta, use_qk_l2norm_in_kernel, dtype)
    q = q * scale
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    outs = []
    for t in range(T):
        state = state * g[:, :, t].exp().unsqueeze(-1)
        k_t = k[:, :, t]
        delta = (v[:, :, t] - (state * k_t.unsqueeze(-1)).sum(-2)) * beta[:, :, t].unsqueeze(-1)
        state = state + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        outs.append((state * q[:, :, t].unsqueeze(-1)).sum(-2))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, V)
    return o.transpose(1, 2), state


def _run(core, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens,
         **core_kwargs):
    scale, _ = prepare_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens)
    kwargs = dict(scale=scale, initial_state=initial_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                  **core_kwargs)
    if cu_seqlens is None:
        o, state = core(q, k, v, g, beta, **kwargs)
    else:
        o, state = _varlen(core, q, k, v, g, beta, cu_seqlens, **kwargs)
    return o.to(q.dtype).contiguous(), (state if output_final_state else None)


def naive_chunk_kimi_delta_attention(
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
    chunk_size: int = 64,
    chunk_state_callback=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked torch reference (prefill); differentiable. Arguments as
    `hf_rankprune.kernels.chunk_kimi_delta_attention`.

    `chunk_state_callback(i, state)` (fixed-length batches only) sees the recurrent state [B, H, K, V] after
    chunk i, i.e. after min((i + 1) * chunk_size, T) tokens: calibration reads states on its grid from one pass.
    """
    if chunk_state_callback is not None and cu_seqlens is not None:
        raise ValueError("chunk_state_callback needs fixed-length batches (cu_seqlens=None).")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return _run(_chunk_core, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                cu_seqlens, chunk_size=int(chunk_size), chunk_state_callback=chunk_state_callback)


def naive_recurrent_kimi_delta_attention(
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
    """Token-by-token torch reference (decode); differentiable. Arguments as
    `hf_rankprune.kernels.fused_recurrent_kimi_delta_attention`."""
    return _run(_recurrent_core, q, k, v, g, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens)
