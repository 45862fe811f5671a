"""Mamba2 (`Mamba2Mixer` at `backbone.layers[i].mixer`; every layer is a mixer, there is no attention). Its config
derives the mixer width from `expand * hidden_size` and checks it against `num_heads * head_dim`, so it cannot state
fewer heads: every pruned checkpoint, uniform plans included, is the `mamba2_rankpruned` type (hf_rankprune installed,
or trust_remote_code=True). The cache holds a conv and an SSM state per layer and nothing that grows with the context."""

from __future__ import annotations

from transformers.models.mamba2 import modeling_mamba2

from .mamba2_ssd import Mamba2SSDAdapter
from .registry import register_adapter


@register_adapter
class Mamba2Adapter(Mamba2SSDAdapter):
    model_types = ("mamba2",)
    ragged_model_classes = (modeling_mamba2.Mamba2ForCausalLM,)
    layer_attribute = "mixer"
    head_count_keys = ("num_heads", "n_groups")
    stock_config_takes_uniform_plans = False
    stock_layer = modeling_mamba2.Mamba2Mixer
    modeling_module = modeling_mamba2

    def conv_kernel_size(self) -> int:
        return int(self.config.conv_kernel)
