"""Kimi-Linear (`KimiLinearDeltaAttention`): low-rank forget and output gates, `A_log` of shape [1, 1, H, 1].

Checkpoints store the head count twice: `linear_num_heads` and the dict `linear_attn_config` (which wins on reload),
so a uniform plan edits both. The full-attention layers are MLA (`KimiLinearAttention`).
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
