"""Gated delta rule: torch reference (`naive`), Triton chunked forward (`chunk`), Triton recurrent (`fused_recurrent`).

Only `naive` is imported here; the Triton modules import triton and are loaded on demand.
"""

from .naive import naive_chunk_gated_delta_rule, naive_recurrent_gated_delta_rule

__all__ = ["naive_chunk_gated_delta_rule", "naive_recurrent_gated_delta_rule"]
