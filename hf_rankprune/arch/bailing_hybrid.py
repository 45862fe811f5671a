"""Bailing hybrid (Ling-3.0): full-rank forget and output gates (`forget_gate.f_proj`, `g_proj`), `A_log` [H], the
safe gate `kda_lower_bound * sigmoid(exp(A_log) * (f + dt_bias))` by default, and `conv1d`, `dt_bias`, `A_log` kept
in fp32 beside bf16 projections.

The config has no linear-attention head fields of its own: it derives `linear_num_heads` from `num_attention_heads`,
which the MLA layers use too, so a uniform plan edits `linear_num_heads` only (transformers keeps the edited value
through `to_dict` / `from_dict`); never `num_attention_heads`.
"""

from __future__ import annotations

from transformers.models.bailing_hybrid import modeling_bailing_hybrid

from .kimi_delta import KimiDeltaAttentionAdapter, kda_head_axes
from .registry import register_adapter


@register_adapter
class BailingHybridAdapter(KimiDeltaAttentionAdapter):
    model_types = ("bailing_hybrid",)
    ragged_model_classes = (modeling_bailing_hybrid.BailingHybridForCausalLM,)
    stock_layer = modeling_bailing_hybrid.BailingHybridDeltaAttention
    modeling_module = modeling_bailing_hybrid
    head_axes = kda_head_axes("full_rank")
