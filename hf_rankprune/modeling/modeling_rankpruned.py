"""Modules of models pruned by hf_rankprune with a per-layer ("ragged") plan.

`RankPrunedGatedDeltaNet` is a gated-delta-rule layer with its own head counts and an explicit value->key head map
(so key groups may have unequal sizes); its forward reproduces the stock Qwen3-Next / Qwen3.5 forward (conv, gates,
gated norm, cache handling) and calls hf_rankprune's kernel dispatch with the map. Its weights use the contiguous
Qwen3.5 layout (`in_proj_qkv [q all | k all | v all]`, `in_proj_z`, `in_proj_b`, `in_proj_a`) for every family.

The `*RankPruned*` model classes are the stock CausalLMs (and vision-language models) whose pruned linear layers are
rebuilt from the language model's `rankprune_plan` at construction, so `from_pretrained` loads pruned checkpoints.
Their model types read checkpoints through the stock type's checkpoint conversion (`register_conversion_mappings`).

Self-contained (imports torch, transformers and its sibling files only): this file is copied next to pruned
checkpoints for `trust_remote_code=True` users who do not have hf_rankprune installed; the kernels then come from the
copied torch reference (`rankprune_gated_delta_rule_naive.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3NextForCausalLM,
)
from transformers.activations import ACT2FN
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    apply_mask_to_padding_states,
    causal_conv1d_fn,
    causal_conv1d_update,
)

from .configuration_rankpruned import (
    RANKPRUNED_SUFFIX,
    Qwen3_5MoeRankPrunedConfig,
    Qwen3_5MoeTextRankPrunedConfig,
    Qwen3_5RankPrunedConfig,
    Qwen3_5TextRankPrunedConfig,
    Qwen3NextRankPrunedConfig,
)

try:
    from hf_rankprune.kernels import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
except ImportError:  # copied next to a checkpoint and loaded with trust_remote_code, without hf_rankprune
    from .rankprune_gated_delta_rule_naive import naive_chunk_gated_delta_rule as chunk_gated_delta_rule
    from .rankprune_gated_delta_rule_naive import naive_recurrent_gated_delta_rule as fused_recurrent_gated_delta_rule

PLAN_CONFIG_KEY = "rankprune_plan"


class RankPrunedRMSNormGated(nn.Module):
    """Gated RMSNorm over one value head (the stock Qwen3-Next / Qwen3.5 `RMSNormGated`)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.activation = "silu"

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        hidden_states = self.weight * hidden_states.to(input_dtype)
        hidden_states = hidden_states * ACT2FN[self.activation](gate.to(torch.float32))
        return hidden_states.to(input_dtype)


class RankPrunedGatedDeltaNet(nn.Module):
    """A gated-delta-rule layer with `num_key_heads` key heads, `num_value_heads` value heads and value head j
    reading key head `value_to_key[j]`."""

    def __init__(self, config, layer_idx: int, num_key_heads: int, num_value_heads: int, value_to_key) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_k_heads = int(num_key_heads)
        self.num_v_heads = int(num_value_heads)
        self.head_k_dim = config.linear_key_head_dim
        self.head_v_dim = config.linear_value_head_dim
        self.key_dim = self.head_k_dim * self.num_k_heads
        self.value_dim = self.head_v_dim * self.num_v_heads
        self.conv_kernel_size = config.linear_conv_kernel_dim
        self.layer_idx = layer_idx
        self.activation = config.hidden_act
        self.layer_norm_epsilon = config.rms_norm_eps
        self.layer_type = "linear_attention"

        self.conv_dim = self.key_dim * 2 + self.value_dim
        self.conv1d = nn.Conv1d(
            in_channels=self.conv_dim,
            out_channels=self.conv_dim,
            bias=False,
            kernel_size=self.conv_kernel_size,
            groups=self.conv_dim,
            padding=self.conv_kernel_size - 1,
        )
        self.dt_bias = nn.Parameter(torch.ones(self.num_v_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_v_heads))
        self.norm = RankPrunedRMSNormGated(self.head_v_dim, eps=self.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.value_dim, self.hidden_size, bias=False)
        self.in_proj_qkv = nn.Linear(self.hidden_size, self.key_dim * 2 + self.value_dim, bias=False)
        self.in_proj_z = nn.Linear(self.hidden_size, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(self.hidden_size, self.num_v_heads, bias=False)
        self.in_proj_a = nn.Linear(self.hidden_size, self.num_v_heads, bias=False)

        mapping = [int(k) for k in value_to_key]
        if len(mapping) != self.num_v_heads or any(not 0 <= k < self.num_k_heads for k in mapping):
            raise ValueError(
                f"layer {layer_idx}: value_to_key {mapping} does not map {self.num_v_heads} value heads "
                f"onto {self.num_k_heads} key heads."
            )
        self.register_buffer("value_to_key", torch.tensor(mapping, dtype=torch.long), persistent=True)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, num_k_heads={self.num_k_heads}, num_v_heads={self.num_v_heads}"

    @force_accelerate_hooks("conv1d")
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None, **kwargs):
        if cache is None:
            cache = kwargs.pop("cache_params", None) or kwargs.pop("past_key_values", None)
        hidden_states = apply_mask_to_padding_states(hidden_states, attention_mask)
        batch_size, seq_len, _ = hidden_states.shape
        if cache is not None:
            conv_state = cache.get_conv_state(self.layer_idx, state_idx=0)
            recurrent_state = cache.get_recurrent_state(self.layer_idx, state_idx=0)
        else:
            conv_state, recurrent_state = None, None

        mixed_qkv = self.in_proj_qkv(hidden_states).transpose(1, 2)
        z = self.in_proj_z(hidden_states).reshape(batch_size, seq_len, -1, self.head_v_dim)
        b = self.in_proj_b(hidden_states)
        a = self.in_proj_a(hidden_states)

        if conv_state is not None and seq_len == 1 and not cache.is_recording_past(self.layer_idx):
            mixed_qkv = causal_conv1d_update(
                mixed_qkv, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.activation
            )
        else:
            if cache is not None:
                mixed_qkv = cache.update_conv_state(mixed_qkv, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
            mixed_qkv = causal_conv1d_fn(
                mixed_qkv, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation
            )
            if cache is not None:
                mixed_qkv = mixed_qkv[:, :, -seq_len:]

        mixed_qkv = mixed_qkv.transpose(1, 2)
        query, key, value = torch.split(mixed_qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        query = query.reshape(batch_size, seq_len, -1, self.head_k_dim)
        key = key.reshape(batch_size, seq_len, -1, self.head_k_dim)
        value = value.reshape(batch_size, seq_len, -1, self.head_v_dim)

        beta = b.sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        value_to_key = self.value_to_key.to(query.device)
        kernel = (
            fused_recurrent_gated_delta_rule
            if recurrent_state is not None and seq_len == 1
            else chunk_gated_delta_rule
        )
        core_attn_out, last_recurrent_state = kernel(
            query,
            key,
            value,
            g=g,
            beta=beta,
            value_to_key=value_to_key,
            initial_state=recurrent_state,
            output_final_state=cache is not None,
            use_qk_l2norm_in_kernel=True,
            cu_seqlens=kwargs.get("cu_seq_lens_q"),
        )
        if cache is not None:
            cache.update_recurrent_state(last_recurrent_state, self.layer_idx)

        core_attn_out = core_attn_out.reshape(-1, self.head_v_dim)
        z = z.reshape(-1, self.head_v_dim)
        core_attn_out = self.norm(core_attn_out, z)
        core_attn_out = core_attn_out.reshape(batch_size, seq_len, -1)
        return self.out_proj(core_attn_out)


def pruned_layer_specs(config) -> dict[int, tuple[int, int, list[int]]]:
    """{layer: (num_key_heads, num_value_heads, value_to_key)} of the layers `config.rankprune_plan` prunes."""
    plan = getattr(config, PLAN_CONFIG_KEY, None) or {}
    specs = {}
    for layer in plan.get("layers", []):
        kept_values, kept_keys = layer["kept_value_heads"], layer["kept_key_heads"]
        if kept_values != list(range(layer["num_value_heads"])) or kept_keys != list(range(layer["num_key_heads"])):
            specs[int(layer["layer"])] = (len(kept_keys), len(kept_values), list(layer["value_to_key"]))
    return specs


def build_pruned_layers(decoder_layers: nn.ModuleList, text_config) -> None:
    """Replace each linear layer that `text_config.rankprune_plan` prunes by a `RankPrunedGatedDeltaNet` of its
    shape."""
    specs = pruned_layer_specs(text_config)
    for index, decoder_layer in enumerate(decoder_layers):
        if index in specs:
            num_key_heads, num_value_heads, value_to_key = specs[index]
            old = decoder_layer.linear_attn
            decoder_layer.linear_attn = RankPrunedGatedDeltaNet(
                text_config, index, num_key_heads, num_value_heads, value_to_key
            ).to(device=old.out_proj.weight.device, dtype=old.out_proj.weight.dtype)


class Qwen3NextRankPrunedForCausalLM(Qwen3NextForCausalLM):
    config_class = Qwen3NextRankPrunedConfig
    config: Qwen3NextRankPrunedConfig

    def __init__(self, config):
        super().__init__(config)
        build_pruned_layers(self.model.layers, config)


class Qwen3_5TextRankPrunedForCausalLM(Qwen3_5ForCausalLM):
    config_class = Qwen3_5TextRankPrunedConfig
    config: Qwen3_5TextRankPrunedConfig

    def __init__(self, config):
        super().__init__(config)
        build_pruned_layers(self.model.layers, config)


class Qwen3_5MoeTextRankPrunedForCausalLM(Qwen3_5MoeForCausalLM):
    config_class = Qwen3_5MoeTextRankPrunedConfig
    config: Qwen3_5MoeTextRankPrunedConfig

    def __init__(self, config):
        super().__init__(config)
        build_pruned_layers(self.model.layers, config)


class Qwen3_5RankPrunedForConditionalGeneration(Qwen3_5ForConditionalGeneration):
    config_class = Qwen3_5RankPrunedConfig
    config: Qwen3_5RankPrunedConfig

    def __init__(self, config):
        super().__init__(config)
        build_pruned_layers(self.model.language_model.layers, config.text_config)


class Qwen3_5MoeRankPrunedForConditionalGeneration(Qwen3_5MoeForConditionalGeneration):
    config_class = Qwen3_5MoeRankPrunedConfig
    config: Qwen3_5MoeRankPrunedConfig

    def __init__(self, config):
        super().__init__(config)
        build_pruned_layers(self.model.language_model.layers, config.text_config)


RANKPRUNED_CONFIGS = (
    Qwen3NextRankPrunedConfig,
    Qwen3_5TextRankPrunedConfig,
    Qwen3_5MoeTextRankPrunedConfig,
    Qwen3_5RankPrunedConfig,
    Qwen3_5MoeRankPrunedConfig,
)


def register_conversion_mappings() -> None:
    """Give every `*_rankpruned` model type its stock type's checkpoint conversion.

    `save_pretrained` writes weights in the stock checkpoint form (per-expert MoE keys, the stock key prefixes), so a
    pruned checkpoint has the same layout as the original and as stock (uniform) pruned checkpoints, which serving
    engines and other tools read. Loading must then apply the same conversion as the stock type (fuse the experts);
    transformers looks it up by model type, and skips custom code unless the type was registered by the user, so
    this runs at import of this file: in the package and in `trust_remote_code=True` copies alike.
    """
    for config_class in RANKPRUNED_CONFIGS:
        stock_mapping = get_checkpoint_conversion_mapping(config_class.model_type.removesuffix(RANKPRUNED_SUFFIX))
        if stock_mapping:
            register_checkpoint_conversion_mapping(config_class.model_type, stock_mapping, overwrite=True)


register_conversion_mappings()
