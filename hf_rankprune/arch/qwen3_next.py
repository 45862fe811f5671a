"""Qwen3-Next: `Qwen3NextGatedDeltaNet`, with q/k/v/z interleaved per key head in `in_proj_qkvz`."""

from __future__ import annotations

from transformers.models.qwen3_next import modeling_qwen3_next

from .base import LinearAttentionAdapter, register_adapter


@register_adapter
class Qwen3NextAdapter(LinearAttentionAdapter):
    family = "qwen3_next"
    model_types = ("qwen3_next",)

    def layer_classes(self):
        return (modeling_qwen3_next.Qwen3NextGatedDeltaNet,)

    def chunk_kernel_sites(self):
        return [(modeling_qwen3_next, "torch_chunk_gated_delta_rule")]
