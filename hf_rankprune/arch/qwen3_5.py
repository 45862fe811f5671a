"""Qwen3.5 (dense and MoE, text or vision-language checkpoints): contiguous `in_proj_qkv`, `in_proj_z/b/a`."""

from __future__ import annotations

from transformers.models.qwen3_5 import modeling_qwen3_5
from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe

from .gated_deltanet import GatedDeltaNetAdapter
from .registry import register_adapter


@register_adapter
class Qwen3_5Adapter(GatedDeltaNetAdapter):
    model_types = ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")
    ragged_model_classes = (
        modeling_qwen3_5.Qwen3_5ForCausalLM,
        modeling_qwen3_5_moe.Qwen3_5MoeForCausalLM,
        modeling_qwen3_5.Qwen3_5ForConditionalGeneration,
        modeling_qwen3_5_moe.Qwen3_5MoeForConditionalGeneration,
    )
    modeling_modules = (modeling_qwen3_5, modeling_qwen3_5_moe)

    def stock_layer_classes(self):
        if self.config.model_type.startswith("qwen3_5_moe"):
            return (modeling_qwen3_5_moe.Qwen3_5MoeGatedDeltaNet,)
        return (modeling_qwen3_5.Qwen3_5GatedDeltaNet,)
