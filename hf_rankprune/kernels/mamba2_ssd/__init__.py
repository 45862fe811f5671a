"""Mamba2 SSD (state space duality) with a head->group map: torch reference (`naive`, differentiable) beside the
Triton forward kernels (`chunk`: prefill, `fused_recurrent`: one decoding token), dispatched by
`hf_rankprune.kernels.ssd_chunk_scan` / `ssd_step`."""

from .naive import naive_ssd_chunk_scan, naive_ssd_step, resolve_head_to_group

__all__ = ["naive_ssd_chunk_scan", "naive_ssd_step", "resolve_head_to_group"]
