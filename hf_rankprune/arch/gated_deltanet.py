"""Shared machinery of the gated-delta-rule families (Qwen3-Next, Qwen3.5, Qwen4-Exp, Lara, Olmo-Hybrid).

The recurrence, per value head j reading key head value_to_key[j]:

    g_t = -exp(A_log_j) * softplus(a_t,j + dt_bias_j);   beta_t = sigmoid(b_t,j) (x beta_scale)
    S <- exp(g_t) S;   S <- S + k_t (beta_t (v_t - S^T k_t))^T;   o_t = S^T q_t
    y = RMSNorm_dv(o) * w * act(z) -> out projection

The canonical weights (family-neutral, heads on the axis `head_axes` names) are
    q, k: [nk, dk, H]; v, z: [nv, dv, H]; b, a: [nv, H]; conv_q, conv_k: [nk, dk, 1, C]; conv_v: [nv, dv, 1, C];
    A_log, dt_bias: [nv]; norm: [dv]; out: [H, nv, dv]; value_to_key: [nv] (long, key head of each value head).
Ragged layers (`RankPrunedGatedDeltaNet`) and Qwen3.5-like stock layers use the contiguous layout
(`in_proj_qkv [q all | k all | v all]`, `in_proj_z`, `in_proj_b`, `in_proj_a`, `conv1d`, `out_proj`); a family with
another stock layout overrides `stock_canonical_weights` / `stock_state`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import ClassVar

import torch
from torch import nn

from ..errors import AdapterError
from ..integrations.accelerate_hooks import materialised_tensors
from ..kernels.gated_delta_rule.naive import naive_chunk_gated_delta_rule
from ..modeling import RankPrunedGatedDeltaNet, modeling_rankpruned
from .base import KEY, VALUE, LinearAttentionAdapter, LinearLayerInfo, StateCallback
from .observation import observe_chunk_kernel


class GatedDeltaNetAdapter(LinearAttentionAdapter):
    """Base of the gated-delta-rule families: a family names its stock layer class(es), its modeling module(s)
    (where the layers look up their kernels) and, if its stock weights are not contiguous, how to convert them."""

    family = "gated_delta_rule"
    recurrence = "Gated DeltaNet"
    head_axes: ClassVar[dict[str, tuple[str, int] | None]] = {
        "q": (KEY, 0),
        "k": (KEY, 0),
        "conv_q": (KEY, 0),
        "conv_k": (KEY, 0),
        "v": (VALUE, 0),
        "z": (VALUE, 0),
        "b": (VALUE, 0),
        "a": (VALUE, 0),
        "conv_v": (VALUE, 0),
        "A_log": (VALUE, 0),
        "dt_bias": (VALUE, 0),
        "out": (VALUE, 1),
        "norm": None,
    }
    modeling_modules: ClassVar[tuple[ModuleType, ...]]  # each calls `torch_chunk_gated_delta_rule` at run time
    output_projection: ClassVar[str] = "out_proj"  # the stock layer's output projection (ragged layers: out_proj)

    @classmethod
    def ragged_layer_class(cls) -> type[nn.Module]:
        return RankPrunedGatedDeltaNet

    def stock_layer_class(self) -> type[nn.Module]:
        """The stock layer class of this model (what uniform plans rebuild layers as)."""
        return self.stock_layer_classes()[0]

    def build_stock_layer(self, layer_index: int) -> nn.Module:
        return self.stock_layer_class()(self.config, layer_index)

    def conv_channels_per_head(self, layer: LinearLayerInfo) -> tuple[int, int]:
        return 2 * layer.key_dim, layer.value_dim  # the conv runs over [q | k | v]

    # -- observation ---------------------------------------------------------------------------------------------
    def observe_states(self, grid: Sequence[int], callback: StateCallback):
        """The chunk kernel the layers look up at call time (in each modeling module, and in the ragged layers'
        module) observed by `observe_chunk_kernel`, with the package's reference kernel for one-pass CPU runs."""
        sites = [(module, "torch_chunk_gated_delta_rule") for module in self.modeling_modules]
        sites.append((modeling_rankpruned, "chunk_gated_delta_rule"))
        return observe_chunk_kernel(self, grid, callback, sites, naive_chunk_gated_delta_rule)

    # -- head outputs and gates (head-importance scores, hf_rankprune.output_scores) ----------------------------
    def head_output_modules(self) -> list[tuple[LinearLayerInfo, nn.Module]]:
        """The output projection of each layer: its input holds value head h in channels [h * dv, (h + 1) * dv);
        zero there removes the head exactly (heads are computed independently and the gated norm is per head)."""
        modules = []
        for layer in self.linear_layers():
            ragged = isinstance(layer.module, RankPrunedGatedDeltaNet)
            modules.append((layer, getattr(layer.module, "out_proj" if ragged else self.output_projection)))
        return modules

    def gate_log_decay(self) -> list[torch.Tensor]:
        """g = -exp(A_log) * softplus(dt_bias) per value head (the decay with the input-dependent `a` at 0), float64
        on the CPU: exp(g) is the fraction of the state kept per token."""
        decays = []
        for layer in self.linear_layers():
            weights = self.canonical_weights(layer.module, materialised_tensors(layer.module))
            a_log = weights["A_log"].detach().to("cpu", torch.float64)
            dt_bias = weights["dt_bias"].detach().to("cpu", torch.float64)
            decays.append(-a_log.exp() * torch.nn.functional.softplus(dt_bias))
        return decays

    # -- surgery -------------------------------------------------------------------------------------------------
    def canonical_weights(self, module, tensors):
        if isinstance(module, RankPrunedGatedDeltaNet):
            return contiguous_to_canonical(module, tensors)
        return self.stock_canonical_weights(module, tensors)

    def stock_canonical_weights(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Canonical weights of a stock layer (default: the contiguous layout)."""
        return contiguous_to_canonical(module, tensors)

    def stock_state(self, weights):
        check_consecutive_groups(weights, self.stock_layer_class().__name__)
        state = canonical_to_contiguous(weights)
        del state["value_to_key"]
        return state

    def ragged_state(self, weights):
        return canonical_to_contiguous(weights)


def check_consecutive_groups(weights: dict[str, torch.Tensor], layer_class: str) -> None:
    """Refuse canonical weights whose value heads do not form equal consecutive key groups (what stock layers
    assume)."""
    nv, nk = weights["v"].shape[0], weights["q"].shape[0]
    if nv % nk or weights["value_to_key"].tolist() != (torch.arange(nv) // (nv // nk)).tolist():
        raise AdapterError(f"a stock {layer_class} needs equal consecutive key groups; use a ragged layer.")


def canonical_to_contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict in the contiguous (Qwen3.5 / RankPrunedGatedDeltaNet) layout."""
    hidden = weights["q"].shape[-1]
    kernel = weights["conv_q"].shape[-1]
    return {
        "in_proj_qkv.weight": torch.cat([weights[n].reshape(-1, hidden) for n in ("q", "k", "v")]),
        "in_proj_z.weight": weights["z"].reshape(-1, hidden),
        "in_proj_b.weight": weights["b"],
        "in_proj_a.weight": weights["a"],
        "conv1d.weight": torch.cat([weights[n].reshape(-1, 1, kernel) for n in ("conv_q", "conv_k", "conv_v")]),
        "A_log": weights["A_log"],
        "dt_bias": weights["dt_bias"],
        "norm.weight": weights["norm"],
        "out_proj.weight": weights["out"].reshape(hidden, -1),
        "value_to_key": weights["value_to_key"],
    }


def split_conv(conv: torch.Tensor, nk: int, nv: int, dk: int, dv: int) -> dict[str, torch.Tensor]:
    """The canonical conv weights of a [q all | k all | v all] depthwise conv weight [channels, 1, C]."""
    kernel = conv.shape[-1]
    conv_q, conv_k, conv_v = torch.split(conv, [nk * dk, nk * dk, nv * dv])
    return {
        "conv_q": conv_q.reshape(nk, dk, 1, kernel),
        "conv_k": conv_k.reshape(nk, dk, 1, kernel),
        "conv_v": conv_v.reshape(nv, dv, 1, kernel),
    }


def contiguous_to_canonical(module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical weights of a layer in the contiguous layout (Qwen3.5 stock, or RankPrunedGatedDeltaNet)."""
    nk, nv, dk, dv = module.num_k_heads, module.num_v_heads, module.head_k_dim, module.head_v_dim
    qkv = tensors["in_proj_qkv.weight"]
    hidden = qkv.shape[-1]
    q, k, v = torch.split(qkv, [nk * dk, nk * dk, nv * dv])
    if "value_to_key" in tensors:
        value_to_key = tensors["value_to_key"].to("cpu", torch.long)
    else:
        value_to_key = torch.arange(nv) // (nv // nk)
    return {
        "q": q.reshape(nk, dk, hidden),
        "k": k.reshape(nk, dk, hidden),
        "v": v.reshape(nv, dv, hidden),
        "z": tensors["in_proj_z.weight"].reshape(nv, dv, hidden),
        "b": tensors["in_proj_b.weight"],
        "a": tensors["in_proj_a.weight"],
        **split_conv(tensors["conv1d.weight"], nk, nv, dk, dv),
        "A_log": tensors["A_log"],
        "dt_bias": tensors["dt_bias"],
        "norm": tensors["norm.weight"],
        "out": tensors["out_proj.weight"].reshape(hidden, nv, dv),
        "value_to_key": value_to_key,
    }
