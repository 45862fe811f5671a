"""Lara-4-Mini: Qwen3.5's gated delta net (contiguous projections), its gated norm multiplying the weight in fp32.

Its checkpoints fuse `in_proj` rows [q | k | v | z | b | a] and call the norm `out_norm` on disk; transformers' conversion
splits them at load and fuses them at save, sizing the pieces from the model's parameters, so pruned checkpoints keep
the fused on-disk form (ragged ones too: their layers have the same parameter names).
"""

from __future__ import annotations

from transformers.models.lara_mini import modeling_lara_mini

from .gated_deltanet import GatedDeltaNetAdapter
from .registry import register_adapter


@register_adapter
class LaraMiniAdapter(GatedDeltaNetAdapter):
    model_types = ("lara_mini",)
    ragged_model_classes = (modeling_lara_mini.LaraMiniForCausalLM,)
    modeling_modules = (modeling_lara_mini,)

    def stock_layer_classes(self):
        return (modeling_lara_mini.LaraMiniGatedDeltaNet,)

    def ragged_layer_options(self):
        return {"norm_weight_in_fp32": True}
