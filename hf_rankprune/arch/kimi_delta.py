"""Shared machinery of the Kimi-delta-attention (KDA) families (Kimi-Linear, Bailing hybrid / Ling, GLM-5 Next).

The recurrence, per head h (no key-head groups: value head h reads key head h, d_k = d_v = d):

    g_t in R^d = forget_gate(x_t)  (per-key-channel log decay);   beta_t = sigmoid(b_t,h)
    S <- diag(exp(g_t)) S;   S <- S + beta_t k_t (v_t - S^T k_t)^T;   o_t = S^T q_t
    y = RMSNorm_d(o) * w * sigmoid(gate) -> o_proj

The families' layers share every parameter name except the gates: the forget gate projects through a low-rank pair
(`forget_gate.f_a_proj` shared, `f_b_proj` per head) or one full-rank `forget_gate.f_proj`, the output gate likewise
(`g_a_proj` / `g_b_proj`, or `g_proj`), and `forget_gate.A_log` is [H] or [1, 1, H, 1]. The canonical weights expose
the head axis of each tensor: a [H * d, ...] tensor becomes [H, d, ...] (`A_log` stays in its stock shape: the
family's `head_axes` says where its heads are). A ragged layer is the stock layer with its own head count
(`rankpruned_kda_layer_class`), so stock and ragged layers have the same state-dict layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from ..integrations.accelerate_hooks import materialised_tensors
from ..kernels.kimi_delta_attention.naive import naive_chunk_kimi_delta_attention
from ..modeling import modeling_rankpruned, rankpruned_kda_layer_class
from .base import KEY, VALUE, LinearAttentionAdapter, LinearLayerInfo, StateCallback
from .observation import observe_chunk_kernel

# stock state-dict name -> (canonical name, kind of head, axis of the stock tensor holding H * d channels)
PER_CHANNEL = {
    "q_proj.weight": ("q", KEY, 0),
    "k_proj.weight": ("k", KEY, 0),
    "v_proj.weight": ("v", VALUE, 0),
    "forget_gate.f_b_proj.weight": ("f_b", VALUE, 0),
    "forget_gate.f_proj.weight": ("f", VALUE, 0),
    "forget_gate.dt_bias": ("dt_bias", VALUE, 0),
    "g_b_proj.weight": ("g_b", VALUE, 0),
    "g_proj.weight": ("g", VALUE, 0),
    "o_proj.weight": ("out", VALUE, 1),
}
SHARED = {"forget_gate.f_a_proj.weight": "f_a", "g_a_proj.weight": "g_a", "o_norm.weight": "norm"}
CONV = ("conv_q", "conv_k", "conv_v")  # conv1d channels are [q all | k all | v all]
GATES = {"low_rank": ("f_a", "f_b", "g_a", "g_b"), "full_rank": ("f", "g")}


def kda_head_axes(gates: str, a_log_axis: int = 0) -> dict[str, tuple[str, int] | None]:
    """The layout spec of a KDA family: its gates ("low_rank" or "full_rank" projections) and the axis of its
    `A_log` holding the heads ([H]: 0; [1, 1, H, 1]: 2)."""
    axes = {name: (kind, axis) for name, kind, axis in PER_CHANNEL.values()}
    axes.update({name: None for name in SHARED.values()})
    axes.update({"conv_q": (KEY, 0), "conv_k": (KEY, 0), "conv_v": (VALUE, 0), "b": (VALUE, 0), "A_log": (VALUE, a_log_axis)})
    unused = set(GATES["full_rank" if gates == "low_rank" else "low_rank"])
    return {name: axis for name, axis in axes.items() if name not in unused}


class KimiDeltaAttentionAdapter(LinearAttentionAdapter):
    """Base of the KDA families: a family names its stock layer class, its modeling module (where the layers look
    up their kernels) and its layout spec (`kda_head_axes`: its gates and the shape of its `A_log`)."""

    family = "kimi_delta_attention"
    recurrence = "Kimi delta attention"
    layer_attribute = "self_attn"
    head_count_keys = ("linear_num_heads", "linear_num_heads")
    stock_layer: ClassVar[type[nn.Module]]
    modeling_module: ClassVar[ModuleType]  # calls `chunk_kimi_delta_attention` at run time
    attention_kind: ClassVar[str] = "full_attention"  # the `layer_types` entry of the MLA layers

    def stock_layer_classes(self):
        return (self.stock_layer,)

    @classmethod
    def ragged_layer_class(cls) -> type[nn.Module]:
        return rankpruned_kda_layer_class(cls.stock_layer)

    def layer_info(self, module: nn.Module) -> LinearLayerInfo:
        heads, dim = module.num_heads, module.head_dim
        return LinearLayerInfo(module.layer_idx, module, heads, heads, dim, dim)

    def build_stock_layer(self, layer_index: int) -> nn.Module:
        return self.stock_layer(self.config, layer_index)

    def set_head_counts(self, num_value_heads: int, num_key_heads: int) -> None:
        """`linear_num_heads`, and the checkpoint's `linear_attn_config["num_heads"]`, which overrides it on reload."""
        self.config.linear_num_heads = int(num_value_heads)
        stored = getattr(self.config, "linear_attn_config", None)
        if isinstance(stored, dict) and "num_heads" in stored:
            self.config.linear_attn_config = {**stored, "num_heads": int(num_value_heads)}

    def conv_channels_per_head(self, layer: LinearLayerInfo) -> tuple[int, int]:
        return 2 * layer.key_dim, layer.value_dim  # the conv runs over [q | k | v]

    def attention_caches(self):
        """The attention layers are MLA: transformers caches their compressed latent, kv_lora_rank +
        qk_rope_head_dim elements per token (measured against the real cache in tests/test_memory.py)."""
        config = self.config
        layers = [i for i, kind in enumerate(config.layer_types) if kind == self.attention_kind]
        per_token = config.kv_lora_rank + config.qk_rope_head_dim
        return [{"kind": self.attention_kind, "layers": layers, "elements_per_token": per_token, "window": None}]

    # -- observation ---------------------------------------------------------------------------------------------
    def observe_states(self, grid: Sequence[int], callback: StateCallback):
        """The stock chunk kernel global and the ragged layers' dispatch, observed by `observe_chunk_kernel` with
        the package's KDA reference kernel for one-pass CPU runs; `state` is [batch, heads, d, d]."""
        sites = [(self.modeling_module, "chunk_kimi_delta_attention"), (modeling_rankpruned, "chunk_kimi_delta_attention")]
        return observe_chunk_kernel(self, grid, callback, sites, naive_chunk_kimi_delta_attention)

    # -- head outputs and gates ------------------------------------------------------------------------------------
    def head_output_modules(self) -> list[tuple[LinearLayerInfo, nn.Module]]:
        """`o_proj`: its input holds head h in channels [h * d, (h + 1) * d); the gated norm is per head."""
        return [(layer, layer.module.o_proj) for layer in self.linear_layers()]

    def gate_log_decay(self) -> list[torch.Tensor]:
        """Per head, the mean over its d channels of the forget gate's log decay at a zero input (the layer's own
        forget gate, so every family's formula, safe gate included, is the stock one), float64."""
        decays = []
        for layer in self.linear_layers():
            tensors = {name.removeprefix("forget_gate."): tensor.to("cpu") for name, tensor in
                       materialised_tensors(layer.module.forget_gate).items()}  # fmt: skip
            projection = tensors.get("f_a_proj.weight", tensors.get("f_proj.weight"))
            zeros = torch.zeros(1, 1, self.config.hidden_size, dtype=projection.dtype)
            with torch.no_grad():
                g = functional_call(layer.module.forget_gate, tensors, (zeros,))
            decays.append(g.reshape(layer.num_value_heads, layer.value_dim).to(torch.float64).mean(dim=1))
        return decays

    # -- surgery -------------------------------------------------------------------------------------------------
    def canonical_weights(self, module, tensors):
        heads, dim = module.num_heads, module.head_dim
        weights = {}
        for name, tensor in tensors.items():
            if name in PER_CHANNEL:
                canonical, _, axis = PER_CHANNEL[name]
                shape = list(tensor.shape)
                weights[canonical] = tensor.reshape(shape[:axis] + [heads, dim] + shape[axis + 1 :])
            elif name in SHARED:
                weights[SHARED[name]] = tensor
        weights["b"] = tensors["b_proj.weight"]
        weights["A_log"] = tensors["forget_gate.A_log"]
        conv = tensors["conv1d.weight"]
        for canonical, piece in zip(CONV, torch.split(conv, heads * dim)):
            weights[canonical] = piece.reshape(heads, dim, *conv.shape[1:])
        weights["value_to_key"] = torch.arange(heads)
        return weights

    def stock_state(self, weights):
        state = {}
        for name, (canonical, _, axis) in PER_CHANNEL.items():
            if canonical in weights:
                tensor = weights[canonical]
                shape = list(tensor.shape)
                state[name] = tensor.reshape(shape[:axis] + [shape[axis] * shape[axis + 1]] + shape[axis + 2 :])
        state.update({name: weights[canonical] for name, canonical in SHARED.items() if canonical in weights})
        state["b_proj.weight"] = weights["b"]
        state["forget_gate.A_log"] = weights["A_log"]
        state["conv1d.weight"] = torch.cat([weights[n].flatten(0, 1) for n in CONV])
        return state

    def ragged_state(self, weights):
        return self.stock_state(weights)  # a ragged layer is the stock layer with its own head count
