"""Shared machinery of the Mamba2 SSD families (Nemotron-H, Falcon-H1, Bamba, Granite-4.0-H, Zamba2, Mamba2).

The recurrence, per head h of group g(h) (H heads of dim P; G groups whose B/C the heads share; state size N):

    in_proj(x) -> [z: H*P | x: H*P | B: G*N | C: G*N | dt: H];  [x | B | C] through a causal depthwise conv + silu
    dt_t = softplus(dt + dt_bias);  S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_{t,g(h)}^T;  y_t = S_t C_{t,g(h)} + D_h x_t
    y = RMSNorm over each group's heads (y * silu(z)) * w -> out_proj

Heads are the value heads (value dim P), groups the key heads (key dim N): the head -> group map is the plan's
value -> key map, and a group whose heads all go is removed with its B/C rows and conv channels. The gated norm takes
its statistics over a whole group, so removing a head is not zeroing its output: exactness is defined against the
original run with the removed heads masked inside the mixer, before the norm's statistics (tests/_pruning_reference.py).
A ragged layer is the stock mixer with its own head and group counts and a head -> group map
(`rankpruned_ssd_layer_class`); stock and ragged layers share parameter names.

Canonical weights (heads on the axis `head_axes` names): z, x: [H, P, hidden]; B, C: [G, N, hidden]; dt: [H, hidden]
(and the same pieces of `in_proj.bias`, `<piece>_proj_bias`, where the family has one); conv_x: [H, P, 1, K]; conv_B, conv_C: [G, N, 1, K]
(and conv bias pieces); dt_bias, A_log, D: [H]; norm: [H, P] (where the mixer has a norm); out: [hidden, H, P];
out_bias: [hidden].
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import ClassVar

import torch
from torch import nn

from ..errors import AdapterError
from ..integrations.accelerate_hooks import materialised_tensors
from ..kernels.mamba2_ssd.naive import naive_ssd_chunk_scan
from ..modeling import modeling_rankpruned, rankpruned_ssd_layer_class
from ..plan import PlanError
from .base import KEY, VALUE, LinearAttentionAdapter, LinearLayerInfo, StateCallback
from .observation import observe_ssd_scan

IN_PROJ = (("z", VALUE), ("x", VALUE), ("B", KEY), ("C", KEY), ("dt", VALUE))  # the rows of in_proj, in order
CONV = (("conv_x", VALUE), ("conv_B", KEY), ("conv_C", KEY))  # the channels of conv1d, in order
PER_HEAD = ("dt_bias", "A_log", "D")


def ssd_head_axes() -> dict[str, tuple[str, int] | None]:
    """The layout spec of the SSD canonical weights (module docstring)."""
    axes: dict[str, tuple[str, int] | None] = {}
    for name, kind in IN_PROJ:
        axes[name] = axes[f"{name}_proj_bias"] = (kind, 0)
    for name, kind in CONV:
        axes[name] = axes[f"{name}_bias"] = (kind, 0)
    axes.update({name: (VALUE, 0) for name in PER_HEAD})
    axes.update({"norm": (VALUE, 0), "out": (VALUE, 1), "out_bias": None})
    return axes


class Mamba2SSDAdapter(LinearAttentionAdapter):
    """Base of the SSD families: a family names its stock mixer class, its modeling module (where the mixers look up
    `mamba2_chunk_scan`), the decoder layer's attribute holding the mixer, and its config's head and group fields."""

    family = "mamba2_ssd"
    recurrence = "Mamba2 SSD"
    stock_layer: ClassVar[type[nn.Module]]
    modeling_module: ClassVar[ModuleType]
    head_axes: ClassVar[dict[str, tuple[str, int] | None]] = ssd_head_axes()

    def stock_layer_classes(self):
        return (self.stock_layer,)

    @classmethod
    def ragged_layer_class(cls) -> type[nn.Module]:
        return rankpruned_ssd_layer_class(cls.stock_layer)

    def layer_info(self, module: nn.Module) -> LinearLayerInfo:
        return LinearLayerInfo(
            module.layer_idx, module, module.n_groups, module.num_heads, module.ssm_state_size, module.head_dim
        )

    def build_stock_layer(self, layer_index: int) -> nn.Module:
        return self.stock_layer(self.config, layer_idx=layer_index)

    def conv_channels_per_head(self, layer: LinearLayerInfo) -> tuple[int, int]:
        return 2 * layer.key_dim, layer.value_dim  # the conv runs over [x | B | C]

    def check_plan(self, plan) -> None:
        """A stock layout that replicates a group would split the heads its gated norm spans: refused."""
        for layer in plan.layers:
            if layer.num_replicated_key_heads:
                raise PlanError(
                    f"layer {layer.layer}: this plan copies an SSD group (a stock layout replicating key heads), which "
                    "would split the heads its gated norm spans. Use budget='uniform' (--budget uniform) for a stock "
                    "checkpoint, or layout='auto' (a ragged checkpoint)."
                )

    # -- observation ---------------------------------------------------------------------------------------------
    def observe_states(self, grid: Sequence[int], callback: StateCallback):
        """The stock `mamba2_chunk_scan` global and the ragged layers' `ssd_chunk_scan`, observed by
        `observe_ssd_scan` with the package's SSD reference; `state` is [batch, heads, head_dim, d_state]."""
        return observe_ssd_scan(
            self, grid, callback, [(self.modeling_module, "mamba2_chunk_scan")],
            [(modeling_rankpruned, "ssd_chunk_scan")], naive_ssd_chunk_scan,
        )  # fmt: skip

    # -- head outputs and gates ----------------------------------------------------------------------------------
    def head_output_modules(self) -> list[tuple[LinearLayerInfo, nn.Module]]:
        """`out_proj`: its input holds head h in channels [h * P, (h + 1) * P). Zeroing a slice there silences the
        head after the group norm (whose statistics still include it): the output-aware scores' approximation of a
        removal for these families."""
        return [(layer, layer.module.out_proj) for layer in self.linear_layers()]

    def head_activations(self):
        """Minitron's Mamba importance: each head's x channels of `in_proj`'s output (rows I to 2I)."""
        def x_channels(module):
            return lambda inputs, output: output[..., module.intermediate_size : 2 * module.intermediate_size]

        return [(layer, layer.module.in_proj, x_channels(layer.module)) for layer in self.linear_layers()]

    def gate_log_decay(self) -> list[torch.Tensor]:
        """A_h * softplus(dt_bias_h) per head (the log decay at a zero dt input), float64."""
        decays = []
        for layer in self.linear_layers():
            tensors = materialised_tensors(layer.module)
            a_log = tensors["A_log"].detach().to("cpu", torch.float64)
            dt_bias = tensors["dt_bias"].detach().to("cpu", torch.float64)
            decays.append(-a_log.exp() * torch.nn.functional.softplus(dt_bias))
        return decays

    # -- surgery -------------------------------------------------------------------------------------------------
    def canonical_weights(self, module, tensors):
        heads, groups, head_dim, state = module.num_heads, module.n_groups, module.head_dim, module.ssm_state_size
        width = {VALUE: (heads, head_dim), KEY: (groups, state)}
        dt_width = (heads, 1)

        def split(tensor: torch.Tensor, pieces, prefix: str = "", suffix: str = "") -> dict[str, torch.Tensor]:
            shapes = [dt_width if name == "dt" else width[kind] for name, kind in pieces]
            parts = torch.split(tensor, [count * size for count, size in shapes])
            out = {}
            for (name, _), (count, size), part in zip(pieces, shapes, parts):
                shaped = part.reshape(count, size, *part.shape[1:])
                out[f"{prefix}{name}{suffix}"] = shaped.squeeze(1) if name == "dt" else shaped
            return out

        weights = split(tensors["in_proj.weight"], IN_PROJ)
        if "in_proj.bias" in tensors:
            weights.update(split(tensors["in_proj.bias"], IN_PROJ, suffix="_proj_bias"))
        conv_pieces = tuple((name.removeprefix("conv_"), kind) for name, kind in CONV)
        weights.update(split(tensors["conv1d.weight"], conv_pieces, prefix="conv_"))
        if "conv1d.bias" in tensors:
            weights.update(split(tensors["conv1d.bias"], conv_pieces, prefix="conv_", suffix="_bias"))
        weights.update({name: tensors[name] for name in PER_HEAD})
        if "norm.weight" in tensors:  # Falcon-H1 without `mamba_rms_norm` has none (nn.Identity)
            weights["norm"] = tensors["norm.weight"].reshape(heads, head_dim)
        out = tensors["out_proj.weight"]
        weights["out"] = out.reshape(out.shape[0], heads, head_dim)
        if "out_proj.bias" in tensors:
            weights["out_bias"] = tensors["out_proj.bias"]
        if "value_to_key" in tensors:
            weights["value_to_key"] = tensors["value_to_key"].to("cpu", torch.long)
        else:
            weights["value_to_key"] = torch.arange(heads) // (heads // groups)
        return weights

    def ragged_state(self, weights):
        def join(pieces, suffix: str = "") -> torch.Tensor:
            return torch.cat([weights[f"{name}{suffix}"].flatten(0, 1 if name != "dt" else 0) for name, _ in pieces])

        state = {"in_proj.weight": join(IN_PROJ)}
        if "z_proj_bias" in weights:
            state["in_proj.bias"] = join(IN_PROJ, "_proj_bias")
        state["conv1d.weight"] = join(CONV)
        if "conv_x_bias" in weights:
            state["conv1d.bias"] = join(CONV, "_bias")
        state.update({name: weights[name] for name in PER_HEAD})
        if "norm" in weights:
            state["norm.weight"] = weights["norm"].flatten()
        state["out_proj.weight"] = weights["out"].flatten(1)
        if "out_bias" in weights:
            state["out_proj.bias"] = weights["out_bias"]
        state["value_to_key"] = weights["value_to_key"]
        return state

    def stock_state(self, weights):
        heads, groups = weights["x"].shape[0], weights["B"].shape[0]
        mapping = weights["value_to_key"].tolist()
        if heads % groups or mapping != (torch.arange(heads) // (heads // groups)).tolist():
            raise AdapterError(f"a stock {self.stock_layer.__name__} needs equal consecutive groups; use a ragged layer.")
        state = self.ragged_state(weights)
        del state["value_to_key"]
        return state
