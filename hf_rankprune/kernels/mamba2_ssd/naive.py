"""Torch reference of the Mamba2 SSD (state space duality) scan with an explicit head->group map.

Two functions (see `hf_rankprune.kernels.ssd_chunk_scan` / `ssd_step` for the dispatched entries):

- `naive_ssd_chunk_scan`: chunked SSD over whole sequences (prefill), the algorithm of transformers'
  `mamba2_chunk_scan` (Mamba2, Bamba, Nemotron-H, ...) run one chunk at a time.
- `naive_ssd_step`: one decoding token, as transformers' `mamba2_selective_state_update`.

Math per head h (H heads of dim P; G groups of B/C with state size N; head h reads group g(h)):

    dt_t = clamp(softplus(dt_raw + dt_bias) if dt_softplus else dt_raw + dt_bias, *dt_limit)
    S_t  = exp(dt_t A_h) S_{t-1} + dt_t x_t B_{t, g(h)}^T          (S [P, N])
    y_t  = S_t C_{t, g(h)} + D_h x_t

The stock kernels group heads consecutively, g(h) = h // (H / G). Pruned layers keep groups of unequal sizes,
so g is an explicit `head_to_group` LongTensor [H] (values in [0, G), any order); None means consecutive
(H % G == 0). Heads read their group's B/C by indexing inside the kernel, which is exactly transformers' kernel
run on B/C expanded to one group per head (`B[:, :, head_to_group]`).

Everything (dt included) is computed in fp32, fp64 if `x` is fp64. Both functions are differentiable.

This file is self-contained (torch and the standard library only): it is copied next to saved checkpoints
for `trust_remote_code` users.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["naive_ssd_chunk_scan", "naive_ssd_step", "resolve_head_to_group"]

# maps whose range was checked on a GPU: the check reads the map on the host (a device sync), so it runs once per
# map (address, version), not at every decoding step (the gated delta rule's reference does the same; this file
# cannot import it)
_CHECKED_MAPS: set[tuple] = set()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def resolve_head_to_group(head_to_group: torch.Tensor | None, num_heads: int, num_groups: int,
                          device: torch.device | None = None) -> torch.Tensor:
    """The group each head reads, LongTensor [H]; None -> consecutive groups (h // (H // G), H % G == 0)."""
    if num_groups < 1:
        raise ValueError(f"B/C must have at least one group, got G={num_groups}")
    if head_to_group is None:
        if num_heads % num_groups:
            raise ValueError(f"with head_to_group=None the heads are grouped consecutively, which needs H % G == 0; "
                             f"got H={num_heads}, G={num_groups} (pass an explicit head_to_group for ragged groups)")
        return torch.arange(num_heads, device=device) // (num_heads // num_groups)
    if not isinstance(head_to_group, torch.Tensor):
        head_to_group = torch.as_tensor(head_to_group)
    if head_to_group.dtype.is_floating_point or head_to_group.dtype.is_complex or head_to_group.dtype == torch.bool:
        raise ValueError(f"head_to_group must be an integer (Long) tensor, got dtype {head_to_group.dtype}")
    if head_to_group.shape != (num_heads,):
        raise ValueError(f"head_to_group must have shape [H] = ({num_heads},), got {tuple(head_to_group.shape)}")
    key = (head_to_group.device, head_to_group.data_ptr(), head_to_group._version, num_heads, num_groups)
    if not head_to_group.is_cuda or key not in _CHECKED_MAPS:
        if num_heads and (int(head_to_group.min()) < 0 or int(head_to_group.max()) >= num_groups):
            raise ValueError(f"head_to_group values must lie in [0, G) = [0, {num_groups}), got "
                             f"{head_to_group.tolist()}")
        if head_to_group.is_cuda:
            if len(_CHECKED_MAPS) > 4096:
                _CHECKED_MAPS.clear()
            _CHECKED_MAPS.add(key)
    return head_to_group.to(device=device, dtype=torch.long)


def _check_dt_limit(dt_limit) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"dt_limit must be a pair (min, max) of floats, got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"dt_limit must satisfy min <= max, got {dt_limit!r}")
    return lo, hi


def _check_per_head(name: str, t: torch.Tensor | None, num_heads: int) -> None:
    if t is not None and tuple(t.shape) != (num_heads,):
        raise ValueError(f"{name} must have shape [H] = ({num_heads},) (one value per head), got {tuple(t.shape)}")


def check_scan_shapes(x, dt, A, B, C, chunk_size, D, dt_bias, initial_state) -> tuple[int, ...]:
    """The chunked scan's input shapes (both backends check them here); returns (Bt, T, H, P, G, N)."""
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
    _check_per_head("A", A, H)
    _check_per_head("D", D, H)
    _check_per_head("dt_bias", dt_bias, H)
    if initial_state is not None and initial_state.shape != (Bt, H, P, N):
        raise ValueError(f"initial_state must have shape [Bt, H, P, N] = {(Bt, H, P, N)}, got "
                         f"{tuple(initial_state.shape)}")
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return Bt, T, H, P, G, N


def check_step_shapes(state, x, dt, A, B, C, D, dt_bias) -> tuple[int, ...]:
    """A decoding step's input shapes (both backends check them here); returns (Bt, H, P, G, N)."""
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
    _check_per_head("A", A, H)
    _check_per_head("D", D, H)
    _check_per_head("dt_bias", dt_bias, H)
    return Bt, H, P, G, N


def _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype):
    """dt + dt_bias, softplus (optional), clamped to dt_limit, in `dtype`."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if lo != -math.inf or hi != math.inf:
        dt = torch.clamp(dt, min=lo, max=hi)
    return dt


def _segment_sum(a: torch.Tensor) -> torch.Tensor:
    """[..., L] -> [..., L, L]: out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal.

    A masked cumulative sum rather than cumsum differences (as transformers' `segment_sum`): no cancellation.
    """
    L = a.shape[-1]
    a = a[..., None].expand(*a.shape, L)
    strict = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    out = a.masked_fill(~strict, 0).cumsum(dim=-2)
    return out.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=a.device).tril(), -math.inf)


def naive_ssd_chunk_scan(
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
    chunk_state_callback=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked Mamba2 SSD scan (prefill); differentiable.

    Args:
        x: [Bt, T, H, P] head inputs.
        dt: [Bt, T, H] raw time steps (before dt_bias / softplus / dt_limit).
        A: [H] per-head decay rates (negative).
        B, C: [Bt, T, G, N] input and output projections of the state, one per group.
        head_to_group: LongTensor [H], the group of B/C each head reads (values in [0, G), any order);
            None: consecutive groups, head h reads group h // (H // G) (H % G == 0).
        chunk_size: tokens per chunk (the last chunk may be shorter; no padding).
        D: [H] skip connection, y += D_h x.
        dt_bias: [H] added to dt before softplus.
        dt_softplus: apply softplus to dt + dt_bias.
        dt_limit: (min, max) clamp of the discretised dt (transformers' default (0, inf) also clamps below 0).
        initial_state: [Bt, H, P, N] state before the first token.
        output_final_state: also return the state after the last token.
        chunk_state_callback: `callback(i, state)` called after chunk i with the state [Bt, H, P, N] after
            min((i + 1) * chunk_size, T) tokens (calibration reads the states on its grid in one pass).

    Returns:
        (y [Bt, T, H, P] fp32 (fp64 for fp64 x), as transformers' `mamba2_chunk_scan` returns fp32;
         final state fp32 / fp64 [Bt, H, P, N] or None).
    """
    Bt, T, H, P, G, N = check_scan_shapes(x, dt, A, B, C, chunk_size, D, dt_bias, initial_state)
    chunk_size = int(chunk_size)
    dt_limit = _check_dt_limit(dt_limit)
    groups = resolve_head_to_group(head_to_group, H, G, device=x.device)

    dtype = _compute_dtype(x)
    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)  # [Bt, T, H]
    xf = x.to(dtype)
    x_dt = xf * dt[..., None]
    dA = (A.to(dtype) * dt).transpose(1, 2)  # [Bt, H, T]
    Bf, Cf = B.to(dtype), C.to(dtype)
    identity = G == H and bool((groups == torch.arange(H, device=groups.device)).all())
    state = x.new_zeros(Bt, H, P, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)

    outs = []
    for i, start in enumerate(range(0, T, chunk_size)):
        end = min(start + chunk_size, T)
        x_c, dA_c = x_dt[:, start:end], dA[:, :, start:end]  # [Bt, L, H, P], [Bt, H, L]
        B_c, C_c = Bf[:, start:end], Cf[:, start:end]
        if not identity:  # one B/C per head: [Bt, L, G, N] -> [Bt, L, H, N]
            B_c, C_c = B_c.index_select(2, groups), C_c.index_select(2, groups)
        A_cum = dA_c.cumsum(-1)  # [Bt, H, L]
        # intra-chunk (diagonal block): attention-like scores C_l . B_s, decayed from s to l (causal)
        scores = torch.einsum("blhn,bshn->bhls", C_c, B_c) * torch.exp(_segment_sum(dA_c))
        y = torch.einsum("bhls,bshp->blhp", scores, x_c)
        # inter-chunk: the state entering the chunk, read by C and decayed to each position
        y = y + torch.einsum("blhn,bhpn->blhp", C_c, state) * torch.exp(A_cum).transpose(1, 2)[..., None]
        outs.append(y)
        # the state leaving the chunk
        decay_to_end = torch.exp(A_cum[..., -1:] - A_cum)  # [Bt, H, L]
        state = (state * torch.exp(A_cum[..., -1])[..., None, None]
                 + torch.einsum("blhn,bhl,blhp->bhpn", B_c, decay_to_end, x_c))
        if chunk_state_callback is not None:
            chunk_state_callback(i, state)
    y = torch.cat(outs, dim=1) if outs else xf.new_zeros(Bt, 0, H, P)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xf
    return y.contiguous(), (state if output_final_state else None)


def naive_ssd_step(
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
    """One decoding token of the Mamba2 SSD recurrence; differentiable; `state` is not modified.

    Args:
        state: [Bt, H, P, N] state before the token.
        x: [Bt, H, P] head inputs.
        dt: [Bt, H] raw time steps.
        A, D, dt_bias: [H] per head, as in `naive_ssd_chunk_scan`.
        B, C: [Bt, G, N].
        head_to_group, dt_softplus, dt_limit: as in `naive_ssd_chunk_scan` (the same dt_limit as the prefill keeps
            the steps an exact continuation of it; transformers' step does not clamp: pass (-inf, inf) for that).

    Returns:
        (y [Bt, H, P] in x's dtype, new state [Bt, H, P, N] fp32 (fp64 for fp64 x)).
    """
    Bt, H, P, G, N = check_step_shapes(state, x, dt, A, B, C, D, dt_bias)
    dt_limit = _check_dt_limit(dt_limit)
    groups = resolve_head_to_group(head_to_group, H, G, device=x.device)

    dtype = _compute_dtype(x)
    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)  # [Bt, H]
    xf = x.to(dtype)
    B_h, C_h = B.to(dtype).index_select(1, groups), C.to(dtype).index_select(1, groups)  # [Bt, H, N]
    decay = torch.exp(dt * A.to(dtype))[..., None, None]
    new_state = state.to(dtype) * decay + (xf * dt[..., None])[..., None] * B_h[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, C_h)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), new_state
