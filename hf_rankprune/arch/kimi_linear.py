"""Kimi-Linear (`KimiLinearDeltaAttention`): low-rank forget and output gates, `A_log` of shape [1, 1, H, 1].

Checkpoints store the head count twice: `linear_num_heads` and the dict `linear_attn_config` (which wins on reload),
so a uniform plan edits both. The full-attention layers are MLA (`KimiLinearAttention`): transformers caches their
compressed latent per token: kv_lora_rank + qk_rope_head_dim elements (measured against transformers' cache in
tests/test_memory.py).
"""

from __future__ import annotations

from transformers.models.kimi_linear import modeling_kimi_linear

from .kimi_delta import KimiDeltaAttentionAdapter, kda_head_axes
from .registry import register_adapter


@register_adapter
class KimiLinearAdapter(KimiDeltaAttentionAdapter):
    model_types = ("kimi_linear",)
    ragged_model_classes = (modeling_kimi_linear.KimiLinearForCausalLM,)
    stock_layer = modeling_kimi_linear.KimiLinearDeltaAttention
    modeling_module = modeling_kimi_linear
    head_axes = kda_head_axes("low_rank", a_log_axis=2)

    def attention_caches(self):
        config = self.config
        layers = [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"]
        per_token = config.kv_lora_rank + config.qk_rope_head_dim
        return [{"kind": "full_attention", "layers": layers, "elements_per_token": per_token, "window": None}]
