"""Kernels for pruned linear-attention layers: the gated delta rule with a value->key head map, Kimi delta
attention (KDA: the delta rule with a per-key-channel decay, q/k/v with the same heads), and the Mamba2 SSD scan
(state space duality) with a head->group map (`ssd_chunk_scan`, `ssd_step`; see `mamba2_ssd/naive.py`).

Layout as flash-linear-attention: for each op (`gated_delta_rule/`, `kimi_delta_attention/`, `mamba2_ssd/`),
`naive.py` (torch reference, differentiable) beside `chunk.py` (prefill) and `fused_recurrent.py` (decoding), both
Triton, forward only, with one dispatch point per entry here (see `backend.py` for the rules: CUDA -> Triton, otherwise
torch; forced with the `backend` argument, `use_backend(...)` or `HF_RANKPRUNE_KERNEL_BACKEND`). Triton is
imported lazily, only when a call is routed to it.
"""

from __future__ import annotations

import torch

from .backend import BACKENDS, ENV_VAR, get_backend, resolve_backend, use_backend
from .gated_delta_rule.naive import (
    l2norm,
    naive_chunk_gated_delta_rule,
    naive_recurrent_gated_delta_rule,
    resolve_value_to_key,
)
from .kimi_delta_attention.naive import naive_chunk_kimi_delta_attention, naive_recurrent_kimi_delta_attention
from .mamba2_ssd.naive import naive_ssd_chunk_scan, naive_ssd_step

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "chunk_gated_delta_rule",
    "chunk_kimi_delta_attention",
    "fused_recurrent_gated_delta_rule",
    "fused_recurrent_kimi_delta_attention",
    "get_backend",
    "l2norm",
    "naive_chunk_gated_delta_rule",
    "naive_chunk_kimi_delta_attention",
    "naive_recurrent_gated_delta_rule",
    "naive_recurrent_kimi_delta_attention",
    "naive_ssd_chunk_scan",
    "naive_ssd_step",
    "resolve_backend",
    "resolve_value_to_key",
    "ssd_chunk_scan",
    "ssd_step",
    "use_backend",
]

_ARGS_DOC = """
    Args:
        q, k: [B, T, H, K] queries and keys (H key heads).
        v: [B, T, HV, V] values (HV value heads).
        g: [B, T, HV] log decay (<= 0); the state is multiplied by exp(g_t) before token t is written.
        beta: [B, T, HV] write strength of each token.
        value_to_key: LongTensor [HV], the key head each value head reads (ragged groups in any order);
            None means consecutive grouping (value head j reads key head j // (HV // H)).
        scale: query scale, K ** -0.5 by default.
        initial_state: [N, HV, K, V] state before the first token (N = B, or the number of sequences
            when `cu_seqlens` is given with B == 1).
        output_final_state: also return the state after the last token, fp32 [N, HV, K, V].
        use_qk_l2norm_in_kernel: L2-normalise q and k (x * rsqrt(sum(x^2) + 1e-6)) inside the kernel.
        cu_seqlens: LongTensor [N + 1], cumulative lengths of sequences packed along T (B must be 1).
        backend: "auto" | "torch" | "triton" (None: context / environment / "auto").

    Returns:
        (o [B, T, HV, V] in the dtype of q, final state fp32 [N, HV, K, V] or None).

    Autograd: the Triton kernels are forward only; a call that needs gradients runs the torch
    reference whatever backend was asked for.
"""


def chunk_gated_delta_rule(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if resolve_backend(backend, (q, k, v, g, beta, initial_state)) == "triton":
        from .gated_delta_rule.chunk import chunk_gated_delta_rule_fwd

        return chunk_gated_delta_rule_fwd(q, k, v, g, beta, value_to_key, scale, initial_state, output_final_state,
                                          use_qk_l2norm_in_kernel, cu_seqlens)
    return naive_chunk_gated_delta_rule(q, k, v, g, beta, value_to_key, scale, initial_state, output_final_state,
                                        use_qk_l2norm_in_kernel, cu_seqlens)


def fused_recurrent_gated_delta_rule(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if resolve_backend(backend, (q, k, v, g, beta, initial_state)) == "triton":
        from .gated_delta_rule.fused_recurrent import fused_recurrent_gated_delta_rule_fwd

        return fused_recurrent_gated_delta_rule_fwd(q, k, v, g, beta, value_to_key, scale, initial_state,
                                                    output_final_state, use_qk_l2norm_in_kernel, cu_seqlens)
    return naive_recurrent_gated_delta_rule(q, k, v, g, beta, value_to_key, scale, initial_state, output_final_state,
                                            use_qk_l2norm_in_kernel, cu_seqlens)


chunk_gated_delta_rule.__doc__ = (
    "Gated delta rule over whole sequences (prefill): chunked algorithm (chunk 64).\n" + _ARGS_DOC
)
fused_recurrent_gated_delta_rule.__doc__ = (
    "Gated delta rule token by token (decoding, short T): recurrent algorithm.\n" + _ARGS_DOC
)


_KDA_ARGS_DOC = """
    Args:
        q, k: [B, T, H, K] queries and keys.
        v: [B, T, H, V] values (the same H heads: KDA has no head grouping).
        g: [B, T, H, K] log decay of each key channel (<= 0); row c of the state is multiplied by exp(g_t[c])
            before token t is written.
        beta: [B, T, H] write strength of each token.
        scale: query scale, K ** -0.5 by default.
        initial_state: [N, H, K, V] state before the first token (N = B, or the number of sequences when
            `cu_seqlens` is given with B == 1).
        output_final_state: also return the state after the last token, fp32 [N, H, K, V].
        use_qk_l2norm_in_kernel: L2-normalise q and k as KDA does (x / sqrt(sum(x^2) + 1e-6)) inside the kernel.
        cu_seqlens: LongTensor [N + 1], cumulative lengths of sequences packed along T (B must be 1).
        backend: "auto" | "torch" | "triton" (None: context / environment / "auto").

    Returns:
        (o [B, T, H, V] in the dtype of q, final state fp32 [N, H, K, V] or None).

    Autograd: the Triton kernels are forward only; a call that needs gradients runs the torch
    reference whatever backend was asked for.
"""


def chunk_kimi_delta_attention(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if resolve_backend(backend, (q, k, v, g, beta, initial_state)) == "triton":
        from .kimi_delta_attention.chunk import chunk_kimi_delta_attention_fwd

        return chunk_kimi_delta_attention_fwd(q, k, v, g, beta, scale, initial_state, output_final_state,
                                              use_qk_l2norm_in_kernel, cu_seqlens)
    return naive_chunk_kimi_delta_attention(q, k, v, g, beta, scale, initial_state, output_final_state,
                                            use_qk_l2norm_in_kernel, cu_seqlens)


def fused_recurrent_kimi_delta_attention(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if resolve_backend(backend, (q, k, v, g, beta, initial_state)) == "triton":
        from .kimi_delta_attention.fused_recurrent import fused_recurrent_kimi_delta_attention_fwd

        return fused_recurrent_kimi_delta_attention_fwd(q, k, v, g, beta, scale, initial_state, output_final_state,
                                                        use_qk_l2norm_in_kernel, cu_seqlens)
    return naive_recurrent_kimi_delta_attention(q, k, v, g, beta, scale, initial_state, output_final_state,
                                                use_qk_l2norm_in_kernel, cu_seqlens)


chunk_kimi_delta_attention.__doc__ = (
    "Kimi delta attention over whole sequences (prefill): chunked algorithm (chunk 64).\n" + _KDA_ARGS_DOC
)
fused_recurrent_kimi_delta_attention.__doc__ = (
    "Kimi delta attention token by token (decoding, short T): recurrent algorithm.\n" + _KDA_ARGS_DOC
)


_SSD_ARGS_DOC = """
    Args:
        x: [Bt, T, H, P] head inputs ([Bt, H, P] for the step: one token).
        dt: [Bt, T, H] raw time steps ([Bt, H] for the step).
        A: [H] per-head decay rates (negative): the state is multiplied by exp(dt_t A_h) before token t is written.
        B, C: [Bt, T, G, N] ([Bt, G, N] for the step) state input / output projections, one per group.
        head_to_group: LongTensor [H], the group of B/C each head reads (ragged groups in any order); None means
            consecutive grouping (head h reads group h // (H // G), H % G == 0).
        chunk_size: tokens per chunk of the scan (the stock Mamba2 configs use 128 or 256; any positive integer).
        D: [H] skip connection (y += D_h x).
        dt_bias: [H] added to dt before the softplus.
        dt_softplus: dt = softplus(dt + dt_bias).
        dt_limit: (min, max) clamp of the discretised dt (default (0, inf), as transformers' prefill).
        initial_state: [Bt, H, P, N] state before the first token (`state` for the step).
        output_final_state: also return the state after the last token, fp32 [Bt, H, P, N].
        backend: "auto" | "torch" | "triton" (None: context / environment / "auto").

    Returns:
        scan: (y [Bt, T, H, P] fp32 as transformers' `mamba2_chunk_scan` (fp64 for fp64 x), final state fp32
        [Bt, H, P, N] or None); step: (y [Bt, H, P] in x's dtype, new state fp32 [Bt, H, P, N]; `state` is not
        modified: the caller writes its cache).

    Backends: as every kernel here (see `backend.py`): "auto" runs the Triton kernels (`mamba2_ssd/chunk.py`,
    `mamba2_ssd/fused_recurrent.py`) on CUDA tensors when triton is importable, the torch reference otherwise;
    "triton" / "torch" force one. The Triton kernels take fp32 / bf16 / fp16 inputs, N <= 256, and choose their
    own chunks (`chunk_size` is only validated there: the scan does not depend on it beyond rounding).

    Autograd: the Triton kernels are forward only; a call that needs gradients runs the torch
    reference whatever backend was asked for.
"""


def ssd_chunk_scan(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if resolve_backend(backend, (x, dt, A, B, C, D, dt_bias, initial_state)) == "triton":
        from .mamba2_ssd.chunk import ssd_chunk_scan_fwd

        return ssd_chunk_scan_fwd(x, dt, A, B, C, head_to_group, chunk_size, D, dt_bias, dt_softplus, dt_limit,
                                  initial_state, output_final_state)
    return naive_ssd_chunk_scan(x, dt, A, B, C, head_to_group, chunk_size, D, dt_bias, dt_softplus, dt_limit,
                                initial_state, output_final_state)


def ssd_step(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if resolve_backend(backend, (state, x, dt, A, B, C, D, dt_bias)) == "triton":
        from .mamba2_ssd.fused_recurrent import ssd_step_fwd

        return ssd_step_fwd(state, x, dt, A, B, C, head_to_group, D, dt_bias, dt_softplus, dt_limit)
    return naive_ssd_step(state, x, dt, A, B, C, head_to_group, D, dt_bias, dt_softplus, dt_limit)


ssd_chunk_scan.__doc__ = "Mamba2 SSD scan over whole sequences (prefill): chunked algorithm.\n" + _SSD_ARGS_DOC
ssd_step.__doc__ = (
    "Mamba2 SSD recurrence for one decoding token (the same dt_limit as the prefill continues it exactly;\n"
    "transformers' step applies none: pass (-inf, inf) to reproduce it).\n" + _SSD_ARGS_DOC
)
