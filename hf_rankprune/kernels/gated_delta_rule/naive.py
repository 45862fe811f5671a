"""Torch reference of the gated delta rule with an explicit value->key head map.

Two implementations with the signature of the public API (see `hf_rankprune.kernels`):

- `naive_chunk_gated_delta_rule`: chunked (UT-transform) algorithm, chunk 64, the same algorithm as
  transformers' `torch_chunk_gated_delta_rule`; fast on CPU for prefill.
- `naive_recurrent_gated_delta_rule`: token-by-token recurrence, as transformers'
  `torch_recurrent_gated_delta_rule`; for decoding (T of a few tokens).

Both are differentiable with autograd (this is the backward of every backend: the Triton kernels are
forward only). Math per token t of a value head (Qwen3-Next form, state S [K, V]):

    S <- exp(g_t) S;   S <- S + k_t (beta_t (v_t - S^T k_t))^T;   o_t = S^T (q_t * scale)

where q_t, k_t belong to key head `value_to_key[value head]`. The state is computed in fp32 (fp64 if the
inputs are fp64); the output is returned in the dtype of `q`, as fla and transformers do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "l2norm",
    "naive_chunk_gated_delta_rule",
    "naive_recurrent_gated_delta_rule",
    "prepare_inputs",
    "resolve_value_to_key",
]

L2NORM_EPS = 1e-6
_CHECKED_MAPS: set[tuple] = set()


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = L2NORM_EPS) -> torch.Tensor:
    """`x * rsqrt(sum(x^2) + eps)`, as fla and transformers normalise q/k."""
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def resolve_value_to_key(value_to_key: torch.Tensor | None, num_k_heads: int, num_v_heads: int, device) -> torch.Tensor:
    """The value->key head map as a LongTensor [HV] on `device`, checked.

    None means consecutive grouping: value head j reads key head j // (HV // H), which needs HV % H == 0.
    """
    if value_to_key is None:
        if num_v_heads % num_k_heads != 0:
            raise ValueError(
                f"value_to_key=None needs num_v_heads ({num_v_heads}) divisible by num_k_heads ({num_k_heads}); "
                "pass an explicit value->key map for ragged groups"
            )
        return torch.arange(num_v_heads, device=device) // (num_v_heads // num_k_heads)
    value_to_key = torch.as_tensor(value_to_key, device=device)
    if value_to_key.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"value_to_key must be an integer tensor, got {value_to_key.dtype}")
    if value_to_key.shape != (num_v_heads,):
        raise ValueError(f"value_to_key must have shape [{num_v_heads}] (one key head per value head), got "
                         f"{tuple(value_to_key.shape)}")
    value_to_key = value_to_key.long()
    # the range check reads the map on the host, a device sync on GPU: there, done once per map (address, version)
    key = (value_to_key.device, value_to_key.data_ptr(), value_to_key._version, num_v_heads, num_k_heads)
    if not value_to_key.is_cuda or key not in _CHECKED_MAPS:
        if num_v_heads and (int(value_to_key.min()) < 0 or int(value_to_key.max()) >= num_k_heads):
            raise ValueError(f"value_to_key entries must lie in [0, {num_k_heads}), got {value_to_key.tolist()}")
        if value_to_key.is_cuda:
            if len(_CHECKED_MAPS) > 4096:
                _CHECKED_MAPS.clear()
            _CHECKED_MAPS.add(key)
    return value_to_key


def prepare_inputs(q, k, v, g, beta, value_to_key, scale, initial_state, cu_seqlens):
    """Check shapes and fill defaults shared by every backend. Returns (value_to_key, scale, num_sequences)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k must be [B, T, H, K] and v [B, T, HV, V]")
    B, T, H, K = k.shape
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")
    if v.shape[:2] != (B, T):
        raise ValueError(f"v {tuple(v.shape)} must share [B, T] with k {tuple(k.shape)}")
    HV, V = v.shape[2], v.shape[3]
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, HV):
            raise ValueError(f"{name} must have shape [B, T, HV] = {(B, T, HV)}, got {tuple(x.shape)}")
    value_to_key = resolve_value_to_key(value_to_key, H, HV, q.device)
    if scale is None:
        scale = K**-0.5
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences packed along T), got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D tensor [N + 1] of cumulative sequence lengths")
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
            raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {cu_seqlens.tolist()}")
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None and initial_state.shape != (N, HV, K, V):
        raise ValueError(f"initial_state must have shape [N, HV, K, V] = {(N, HV, K, V)}, got "
                         f"{tuple(initial_state.shape)}")
    return value_to_key, float(scale), N


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _to_heads_first(q, k, v, g, beta, value_to_key, use_qk_l2norm_in_kernel, dtype):
    """[B, T, h, d] -> [B, HV, T, d] in `dtype`, q/k normalised (optional) and gathered by the map."""
    q, k, v = (x.to(dtype) for x in (q, k, v))
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q.index_select(2, value_to_key)
    k = k.index_select(2, value_to_key)
    return [x.transpose(1, 2).to(dtype) for x in (q, k, v, g, beta)]


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


def _chunk_core(q, k, v, g, beta, value_to_key, scale, initial_state, use_qk_l2norm_in_kernel, chunk_size=64,
                chunk_state_callback=None):
    dtype = _state_dtype(q)
    B, T = v.shape[:2]
    HV, V = v.shape[2:]
    K = k.shape[-1]
    q, k, v, g, beta = _to_heads_first(q, k, v, g, beta, value_to_key, use_qk_l2norm_in_kernel, dtype)
    q = q * scale
    pad = (chunk_size - T % chunk_size) % chunk_size
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    NT = (T + pad) // chunk_size
    v_beta = v * beta.unsqueeze(-1)
    k_beta = k * beta.unsqueeze(-1)
    q, k, k_beta, v_beta = (x.reshape(B, HV, NT, chunk_size, x.shape[-1]) for x in (q, k, k_beta, v_beta))
    g = g.reshape(B, HV, NT, chunk_size).cumsum(-1)
    upper = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(1)
    decay = (g.unsqueeze(-1) - g.unsqueeze(-2)).masked_fill(upper, float("-inf")).exp()
    ut_system = (k_beta @ k.transpose(-1, -2)) * decay
    attn = (q @ k.transpose(-1, -2)) * decay
    u = torch.linalg.solve_triangular(ut_system, v_beta, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(ut_system, k_beta * g.exp().unsqueeze(-1), upper=False, unitriangular=True)
    q = q * g.exp().unsqueeze(-1)
    k = k * (g[..., -1:] - g).exp().unsqueeze(-1)
    chunk_decay = g[..., -1].exp()[..., None, None]
    if initial_state is None:
        state = q.new_zeros(B, HV, K, V)
    else:
        state = initial_state.to(dtype)
    outs = []
    for i in range(NT):
        v_new = u[:, :, i] - w[:, :, i] @ state
        outs.append(q[:, :, i] @ state + attn[:, :, i] @ v_new)
        state = state * chunk_decay[:, :, i] + k[:, :, i].transpose(-1, -2) @ v_new
        if chunk_state_callback is not None:
            chunk_state_callback(i, state)
    if not outs:  # T == 0
        return v.new_zeros(B, 0, HV, V), state
    o = torch.stack(outs, dim=2).reshape(B, HV, NT * chunk_size, V)[:, :, :T]
    return o.transpose(1, 2), state


def _recurrent_core(q, k, v, g, beta, value_to_key, scale, initial_state, use_qk_l2norm_in_kernel):
    dtype = _state_dtype(q)
    B, T = v.shape[:2]
    HV, V = v.shape[2:]
    K = k.shape[-1]
    q, k, v, g, beta = _to_heads_first(q, k, v, g, beta, value_to_key, use_qk_l2norm_in_kernel, dtype)
    q = q * scale
    state = q.new_zeros(B, HV, K, V) if initial_state is None else initial_state.to(dtype)
    outs = []
    for t in range(T):
        state = state * g[:, :, t].exp()[..., None, None]
        k_t = k[:, :, t]
        delta = (v[:, :, t] - (state * k_t.unsqueeze(-1)).sum(-2)) * beta[:, :, t].unsqueeze(-1)
        state = state + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        outs.append((state * q[:, :, t].unsqueeze(-1)).sum(-2))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(B, HV, 0, V)
    return o.transpose(1, 2), state


def _run(core, q, k, v, g, beta, value_to_key, scale, initial_state, output_final_state,
         use_qk_l2norm_in_kernel, cu_seqlens, **core_kwargs):
    value_to_key, scale, _ = prepare_inputs(q, k, v, g, beta, value_to_key, scale, initial_state, cu_seqlens)
    kwargs = dict(value_to_key=value_to_key, scale=scale, initial_state=initial_state,
                  use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, **core_kwargs)
    if cu_seqlens is None:
        o, state = core(q, k, v, g, beta, **kwargs)
    else:
        o, state = _varlen(core, q, k, v, g, beta, cu_seqlens, **kwargs)
    return o.to(q.dtype).contiguous(), (state if output_final_state else None)


def naive_chunk_gated_delta_rule(
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
    chunk_size: int = 64,
    chunk_state_callback=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked torch reference (prefill); differentiable. Arguments as `hf_rankprune.kernels.chunk_gated_delta_rule`.

    `chunk_state_callback(i, state)` (fixed-length batches only) sees the recurrent state after chunk i, i.e. after
    min((i + 1) * chunk_size, T) tokens: calibration reads states on its grid from one pass this way.
    """
    if chunk_state_callback is not None and cu_seqlens is not None:
        raise ValueError("chunk_state_callback needs fixed-length batches (cu_seqlens=None).")
    return _run(_chunk_core, q, k, v, g, beta, value_to_key, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens, chunk_size=chunk_size,
                chunk_state_callback=chunk_state_callback)


def naive_recurrent_gated_delta_rule(
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
    """Token-by-token torch reference (decode); differentiable. Arguments as
    `hf_rankprune.kernels.fused_recurrent_gated_delta_rule`."""
    return _run(_recurrent_core, q, k, v, g, beta, value_to_key, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens)
