"""Mamba2 SSD (state space duality) with a head->group map: torch reference (`naive`).

No Triton kernel yet: the dispatch in `hf_rankprune.kernels` runs the torch reference on every device.
"""

from .naive import naive_ssd_chunk_scan, naive_ssd_step, resolve_head_to_group

__all__ = ["naive_ssd_chunk_scan", "naive_ssd_step", "resolve_head_to_group"]
