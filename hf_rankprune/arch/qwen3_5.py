"""Qwen3.5 (dense and MoE, text or vision-language checkpoints): contiguous `in_proj_qkv`, `in_proj_z/b/a`."""

from __future__ import annotations

from transformers.models.qwen3_5 import modeling_qwen3_5
from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe

from .base import LinearAttentionAdapter, register_adapter


@register_adapter
class Qwen3_5Adapter(LinearAttentionAdapter):
    family = "qwen3_5"
    model_types = ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")

    def layer_classes(self):
        return (modeling_qwen3_5.Qwen3_5GatedDeltaNet, modeling_qwen3_5_moe.Qwen3_5MoeGatedDeltaNet)

    def chunk_kernel_sites(self):
        return [
            (modeling_qwen3_5, "torch_chunk_gated_delta_rule"),
            (modeling_qwen3_5_moe, "torch_chunk_gated_delta_rule"),
        ]
