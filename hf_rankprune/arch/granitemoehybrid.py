"""Granite 4.0-H (`GraniteMoeHybridMambaLayer` at `model.layers[i].mamba` of the "linear_attention" layers). Its
config derives the mixer width from `mamba_expand * hidden_size` and checks it against `mamba_n_heads * mamba_d_head`,
so it cannot state fewer heads: every pruned checkpoint, uniform plans included, is the
`granitemoehybrid_rankpruned` type (hf_rankprune installed, or trust_remote_code=True)."""

from __future__ import annotations

from transformers.models.granitemoehybrid import modeling_granitemoehybrid

from .mamba2_ssd import Mamba2SSDAdapter
from .registry import register_adapter


@register_adapter
class GraniteMoeHybridAdapter(Mamba2SSDAdapter):
    model_types = ("granitemoehybrid",)
    ragged_model_classes = (modeling_granitemoehybrid.GraniteMoeHybridForCausalLM,)
    layer_attribute = "mamba"
    head_count_keys = ("mamba_n_heads", "mamba_n_groups")
    stock_config_takes_uniform_plans = False
    stock_layer = modeling_granitemoehybrid.GraniteMoeHybridMambaLayer
    modeling_module = modeling_granitemoehybrid

    def conv_kernel_size(self) -> int:
        return int(self.config.mamba_d_conv)
