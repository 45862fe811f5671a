"""Kimi delta attention: torch reference (`naive`), Triton chunked forward (`chunk`), Triton recurrent
(`fused_recurrent`).

Only `naive` is imported here; the Triton modules import triton and are loaded on demand.
"""

from .naive import naive_chunk_kimi_delta_attention, naive_recurrent_kimi_delta_attention

__all__ = ["naive_chunk_kimi_delta_attention", "naive_recurrent_kimi_delta_attention"]
