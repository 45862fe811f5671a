"""Nemotron-H / Nemotron-3 (`NemotronHMamba2Mixer` at `model.layers[i].mixer` of the "linear_attention" blocks; other
blocks are attention, MoE or MLP). Its mixer's width is `mamba_num_heads * mamba_head_dim`, so a uniform plan is a
stock config edit of `mamba_num_heads` and `n_groups`. The prefill clamps dt at `time_step_min`; decoding does not."""

from __future__ import annotations

from transformers.models.nemotron_h import modeling_nemotron_h

from .mamba2_ssd import Mamba2SSDAdapter
from .registry import register_adapter


@register_adapter
class NemotronHAdapter(Mamba2SSDAdapter):
    model_types = ("nemotron_h",)
    ragged_model_classes = (modeling_nemotron_h.NemotronHForCausalLM,)
    layer_attribute = "mixer"
    head_count_keys = ("mamba_num_heads", "n_groups")
    stock_layer = modeling_nemotron_h.NemotronHMamba2Mixer
    modeling_module = modeling_nemotron_h

    def conv_kernel_size(self) -> int:
        return int(self.config.conv_kernel)
