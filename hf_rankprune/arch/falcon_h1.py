"""Falcon-H1 (`FalconH1Mixer` at `model.layers[i].mamba`; every decoder layer is "hybrid": attention and the Mamba2
mixer in parallel, their outputs summed). The mixer differs from Mamba2's:

- its input is scaled by `ssm_in_multiplier` and in_proj's output by `mup_vector` (`ssm_multipliers` per z / x / B / C
  / dt segment). `FalconH1Model` registers it on each mixer from the config, non-persistent: here it is a canonical
  tensor sliced like in_proj's rows; ragged layers and ragged models rebuild it at their own sizes
  (`_falcon_h1_ssd_resize`, `_falcon_h1_init_mup_vectors` in hf_rankprune/modeling/modeling_rankpruned.py);
- without `mamba_rms_norm` (the default) the output is y * silu(z): no norm, so heads do not interact; with it,
  `FalconH1RMSNormGated`, the gate after the norm when `mamba_norm_before_gate`.

The mixer's width is `mamba_d_ssm = mamba_n_heads * mamba_d_head` (validated), so a uniform plan is a stock config edit
of `mamba_n_heads` and `mamba_d_ssm` together (and `mamba_n_groups`); `mamba_d_head` ("auto" until the config resolves
it) is written as a number, so the edit survives save/reload."""

from __future__ import annotations

import torch
from transformers.models.falcon_h1 import modeling_falcon_h1

from ..modeling import modeling_rankpruned
from .base import KEY, VALUE
from .mamba2_ssd import IN_PROJ, Mamba2SSDAdapter, ssd_head_axes
from .registry import register_adapter

MUP = tuple((f"mup_{name}", kind) for name, kind in IN_PROJ)  # mup_vector's pieces, in in_proj's row order


@register_adapter
class FalconH1Adapter(Mamba2SSDAdapter):
    model_types = ("falcon_h1",)
    ragged_model_classes = (modeling_falcon_h1.FalconH1ForCausalLM,)
    layer_attribute = "mamba"
    head_count_keys = ("mamba_n_heads", "mamba_n_groups")
    stock_layer = modeling_falcon_h1.FalconH1Mixer
    modeling_module = modeling_falcon_h1
    head_axes = {**ssd_head_axes(), **{name: (kind, 0) for name, kind in MUP}}

    def conv_kernel_size(self) -> int:
        return int(self.config.mamba_d_conv)

    def set_head_counts(self, num_value_heads: int, num_key_heads: int) -> None:
        config = self.config
        head_dim = config.mamba_d_head
        if not isinstance(head_dim, int):  # "auto": I / H at the current counts
            inner = config.mamba_d_ssm or int(config.mamba_expand * config.hidden_size)
            head_dim = inner // config.mamba_n_heads
        super().set_head_counts(num_value_heads, num_key_heads)
        config.mamba_d_head = int(head_dim)
        config.mamba_d_ssm = int(num_value_heads) * int(head_dim)

    def build_stock_layer(self, layer_index: int):
        """The stock mixer with the `mup_vector` `FalconH1Model` gives it (non-persistent, at the config's size)."""
        layer = super().build_stock_layer(layer_index)
        layer.register_buffer("mup_vector", modeling_falcon_h1.compute_mup_vector(self.config), persistent=False)
        return layer

    # -- surgery -------------------------------------------------------------------------------------------------
    def canonical_weights(self, module, tensors):
        heads, groups, head_dim, state = module.num_heads, module.n_groups, module.head_dim, module.ssm_state_size
        weights = super().canonical_weights(module, tensors)
        mup = tensors.get("mup_vector")
        if mup is None:  # a mixer outside FalconH1Model: the rows its model would give it
            mup = modeling_rankpruned._falcon_h1_mup_vector(module, self.config.ssm_multipliers)
        shapes = {VALUE: (heads, head_dim), KEY: (groups, state)}
        pieces = [(heads,) if name == "mup_dt" else shapes[kind] for name, kind in MUP]
        parts = torch.split(mup.reshape(-1), [int(torch.Size(shape).numel()) for shape in pieces])
        weights.update({name: part.reshape(shape) for (name, _), shape, part in zip(MUP, pieces, parts)})
        return weights

    def ragged_state(self, weights):
        state = super().ragged_state(weights)
        state["mup_vector"] = torch.cat([weights[name].flatten() for name, _ in MUP]).view(1, 1, -1)
        return state
