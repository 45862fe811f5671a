"""Zamba2 (`Zamba2MambaMixer` in every layer: `model.layers[i].mamba` of the "linear_attention" layers,
`model.layers[i].mamba_decoder.mamba` of the "hybrid" ones, which run a shared transformer block first). Its config
derives the mixer width from `mamba_expand * hidden_size` (and `mamba_headdim` from it), so it cannot state fewer
heads: every pruned checkpoint, uniform plans included, is the `zamba2_rankpruned` type (hf_rankprune installed, or
trust_remote_code=True). The conv always has a bias and the gated norm's eps is fixed (1e-5): the stock mixer's own
values, which the ragged layer keeps. Hybrid layers also cache the shared block's keys and values (at
`attention_head_dim = 2 * hidden_size / num_attention_heads`: the block attends over [hidden | embeddings])."""

from __future__ import annotations

from transformers.models.zamba2 import modeling_zamba2

from .mamba2_ssd import Mamba2SSDAdapter
from .registry import register_adapter


@register_adapter
class Zamba2Adapter(Mamba2SSDAdapter):
    model_types = ("zamba2",)
    ragged_model_classes = (modeling_zamba2.Zamba2ForCausalLM,)
    layer_attribute = ("mamba", "mamba_decoder.mamba")  # "linear_attention" layers, "hybrid" layers
    head_count_keys = ("n_mamba_heads", "mamba_ngroups")
    stock_config_takes_uniform_plans = False
    stock_layer = modeling_zamba2.Zamba2MambaMixer
    modeling_module = modeling_zamba2

    def conv_kernel_size(self) -> int:
        return int(self.config.mamba_d_conv)
