"""Qwen3.5 (dense and MoE, text or vision-language checkpoints): contiguous `in_proj_qkv`, `in_proj_z/b/a`."""

from __future__ import annotations

import torch
from transformers.models.qwen3_5 import modeling_qwen3_5
from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe

from .base import (
    AdapterError,
    LinearAttentionAdapter,
    _pruned_layer_class,
    canonical_to_contiguous,
    contiguous_to_canonical,
    register_adapter,
)


@register_adapter
class Qwen3_5Adapter(LinearAttentionAdapter):
    family = "qwen3_5"
    model_types = (
        "qwen3_5",
        "qwen3_5_text",
        "qwen3_5_moe",
        "qwen3_5_moe_text",
        "qwen3_5_text_rankpruned",
        "qwen3_5_moe_text_rankpruned",
    )

    def layer_classes(self):
        return (
            modeling_qwen3_5.Qwen3_5GatedDeltaNet,
            modeling_qwen3_5_moe.Qwen3_5MoeGatedDeltaNet,
            _pruned_layer_class(),  # layers of ragged-pruned models
        )

    def chunk_kernel_sites(self):
        return [
            (modeling_qwen3_5, "torch_chunk_gated_delta_rule"),
            (modeling_qwen3_5_moe, "torch_chunk_gated_delta_rule"),
        ]

    # -- surgery: contiguous in_proj_qkv [q all | k all | v all], in_proj_z, in_proj_b, in_proj_a; conv1d channels
    # [q all | k all | v all]: the layout of RankPrunedGatedDeltaNet, so the shared helpers do the slicing ----------
    def _stock_layer_class(self):
        if self.config.model_type.startswith("qwen3_5_moe"):
            return modeling_qwen3_5_moe.Qwen3_5MoeGatedDeltaNet
        return modeling_qwen3_5.Qwen3_5GatedDeltaNet

    def _stock_weights(self, module, tensors):
        return contiguous_to_canonical(module, tensors)

    def _stock_state(self, weights):
        nv, nk = weights["v"].shape[0], weights["q"].shape[0]
        if nv % nk or weights["value_to_key"].tolist() != (torch.arange(nv) // (nv // nk)).tolist():
            raise AdapterError("a stock Qwen3.5 layer needs equal consecutive key groups; use a ragged layer.")
        state = canonical_to_contiguous(weights)
        del state["value_to_key"]
        return state
