"""The adapter contract: everything hf_rankprune knows about a model family, and nothing else does.

An adapter owns, for its family:
- **geometry**: which modules are the linear-attention layers, their head counts and dims (`linear_layers`,
  `geometry`), the config keys a uniform plan edits (`head_count_keys`), and the cache geometry memory accounting
  needs (`model_info`, `attention_caches`);
- **a layout spec** (`head_axes`): the family's weights in a canonical form, and for each canonical tensor which
  axis belongs to a key head or a value head, so the surgery engine (`hf_rankprune.surgery`) slices every family
  with one function (`select_heads`);
- **state observation** during calibration (`observe_states`) and the gates/head outputs the importance scores use;
- **its ragged pair**: the stock model classes that get a `*_rankpruned` counterpart (`ragged_model_classes`), the
  layer class pruned layers become (`ragged_layer_class`) and the options that layer takes from the config.

`docs/adding_a_family.md` walks through writing one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import AdapterError
from ..memory import dtype_name
from ..plan import LayerGeometry, ModelGeometry
from .registry import text_config

StateCallback = Callable[[int, int, torch.Tensor], None]
KEY, VALUE = "key", "value"  # the two kinds of head a canonical tensor's axis can hold (`head_axes`)


@dataclass(frozen=True)
class LinearLayerInfo:
    """One linear-attention layer: its index among the model's decoder layers, its module and head geometry."""

    index: int
    module: nn.Module
    num_key_heads: int
    num_value_heads: int
    key_dim: int
    value_dim: int

    @property
    def rank_cap(self) -> int:
        """Largest possible rank of a head's state, min(d_k, d_v)."""
        return min(self.key_dim, self.value_dim)


class LinearAttentionAdapter:
    """Base of all adapters. A family subclasses it (or a shared base such as `GatedDeltaNetAdapter`) and is
    registered with `@register_adapter`."""

    # -- declarations ----------------------------------------------------------------------------------------------
    family: ClassVar[str]  # the recurrence ("gated_delta_rule", ...)
    recurrence: ClassVar[str]  # its name for people ("Gated DeltaNet", ...): model cards say what a head is
    model_types: ClassVar[tuple[str, ...]]  # stock model types (the `*_rankpruned` ones come from the ragged pairs)
    ragged_model_classes: ClassVar[tuple[type, ...]] = ()  # stock model classes with a ragged-pruned counterpart
    layer_attribute: ClassVar[str | tuple[str, ...]] = "linear_attn"  # decoder layer path(s) to the linear layer
    head_count_keys: ClassVar[tuple[str, str]] = ("linear_num_value_heads", "linear_num_key_heads")
    # whether the stock config can state a uniform plan's head counts (False: widths derived from hidden * expand, so
    # uniform plans too become the ragged-pruned model type)
    stock_config_takes_uniform_plans: ClassVar[bool] = True
    # canonical tensor name -> (KEY | VALUE, axis holding the heads), or None for tensors shared by all heads
    head_axes: ClassVar[dict[str, tuple[str, int] | None]]

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = text_config(model.config)

    # -- geometry ------------------------------------------------------------------------------------------------
    def stock_layer_classes(self) -> tuple[type[nn.Module], ...]:
        """The stock module classes that are this family's linear-attention layers."""
        raise NotImplementedError

    @classmethod
    def ragged_layer_class(cls) -> type[nn.Module]:
        """The module class layers of ragged plans become (own head counts and value->key map)."""
        raise NotImplementedError

    def layer_info(self, module: nn.Module) -> LinearLayerInfo:
        """Geometry of one layer module (stock or ragged)."""
        return LinearLayerInfo(
            index=module.layer_idx,
            module=module,
            num_key_heads=module.num_k_heads,
            num_value_heads=module.num_v_heads,
            key_dim=module.head_k_dim,
            value_dim=module.head_v_dim,
        )

    def linear_layers(self) -> list[LinearLayerInfo]:
        """Every linear-attention layer of the model, ordered by layer index."""
        classes = (*self.stock_layer_classes(), self.ragged_layer_class())
        layers = [self.layer_info(module) for module in self.model.modules() if isinstance(module, classes)]
        return sorted(layers, key=lambda layer: layer.index)

    def value_to_key(self, layer: LinearLayerInfo) -> list[int] | None:
        """The value->key map a layer module carries (ragged layers), or None (stock consecutive grouping)."""
        buffer = getattr(layer.module, "value_to_key", None)
        if not isinstance(buffer, torch.Tensor) or buffer.device.type == "meta":
            return None
        return [int(k) for k in buffer.tolist()]

    def geometry(self) -> ModelGeometry:
        """What plans are built from and checked against (no module references)."""
        layers = []
        for info in self.linear_layers():
            mapping = self.value_to_key(info)
            layers.append(
                LayerGeometry(
                    index=info.index,
                    num_key_heads=info.num_key_heads,
                    num_value_heads=info.num_value_heads,
                    key_dim=info.key_dim,
                    value_dim=info.value_dim,
                    value_to_key=tuple(mapping) if mapping is not None else None,
                )
            )
        return ModelGeometry(model_type=self.config.model_type, layers=tuple(layers), model_info=self.model_info())

    def model_info(self) -> dict:
        """The geometry of `hf_rankprune.memory`: conv state per head, attention caches, dtype."""
        config = self.config
        layer_types = list(getattr(config, "layer_types", None) or [])
        first = self.linear_layers()[0]
        dtype = getattr(self.model, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            dtype = getattr(config, "dtype", None) or torch.float32
        per_key, per_value = self.conv_channels_per_head(first)
        return {
            "hidden_size": getattr(config, "hidden_size", None),
            "num_hidden_layers": getattr(config, "num_hidden_layers", len(layer_types)),
            "conv_kernel_size": self.conv_kernel_size(),
            "conv_channels_per_key_head": per_key,
            "conv_channels_per_value_head": per_value,
            "attention_caches": self.attention_caches(),
            "fixed_states": self.fixed_states(),
            "dtype": dtype_name(dtype),
            **({} if self.stock_config_takes_uniform_plans else {"stock_uniform": False}),
        }

    def conv_kernel_size(self) -> int:
        """Columns of a linear layer's convolution state (transformers keeps the whole kernel width)."""
        return int(getattr(self.config, "linear_conv_kernel_dim", 0) or 0)

    def conv_channels_per_head(self, layer: LinearLayerInfo) -> tuple[int, int]:
        """(channels per key head, channels per value head) of a linear layer's convolution state."""
        raise NotImplementedError

    def attention_caches(self) -> list[dict]:
        """The model's attention caches by `layer_types`: full attention (and the attention half of `hybrid` layers)
        keeps every token, sliding attention its window. Families with other cache kinds (indexers)
        extend this."""
        config = self.config
        layer_types = list(getattr(config, "layer_types", None) or [])
        heads = getattr(config, "num_attention_heads", None)
        head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0)
        per_token = 2 * (getattr(config, "num_key_value_heads", None) or 0) * head_dim
        caches = []
        sliding_window = getattr(config, "sliding_window", None)
        kept = sliding_window - 1 if sliding_window else None  # transformers keeps the last sliding_window - 1 tokens
        for kind, window in (("full_attention", None), ("hybrid", None), ("sliding_attention", kept)):
            layers = [i for i, layer_type in enumerate(layer_types) if layer_type == kind]
            if layers:
                caches.append({"kind": kind, "layers": layers, "elements_per_token": per_token, "window": window})
        return caches

    def fixed_states(self) -> list[dict]:
        """Per-sequence states that pruning does not change and the context does not grow (`hf_rankprune.memory`);
        none by default."""
        return []

    def check_plan(self, plan) -> None:
        """Refuse (before any change) a plan the family cannot carry out exactly; every plan by default."""

    def set_head_counts(self, num_value_heads: int, num_key_heads: int) -> None:
        """Write the head counts every stock layer is built with into the config (`head_count_keys`)."""
        value_key, key_key = self.head_count_keys
        setattr(self.config, value_key, int(num_value_heads))
        setattr(self.config, key_key, int(num_key_heads))

    # -- observation ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def observe_states(self, grid: Sequence[int], callback: StateCallback) -> Iterator[None]:
        """Within the block, every prefill of a linear layer from an empty state calls `callback(layer, g, state)`
        at each grid position `grid[g]` the sequence reaches; `state` is [batch, value_heads, d_k, d_v] (or its
        transpose, as the family's cache holds it: every state statistic is transpose-invariant). Outputs are
        unchanged, and nothing per token is kept."""
        raise NotImplementedError
        yield

    def head_output_modules(self) -> list[tuple[LinearLayerInfo, nn.Module]]:
        """Per linear layer, the module whose input is the layer's head outputs, [..., num_value_heads * value_dim]
        with value head h in channels [h * value_dim, (h + 1) * value_dim); scaling a slice by 0 removes the head."""
        raise NotImplementedError

    def gate_log_decay(self) -> list[torch.Tensor]:
        """Per linear layer, per value head, the log of the state's per-token decay at a zero gate input."""
        raise NotImplementedError

    def head_activations(self) -> list[tuple[LinearLayerInfo, nn.Module, Callable]]:
        """Per linear layer, where the `activation` score reads each head's channels: (layer, module, select), with
        `select(inputs, output)` of that module's forward giving [..., num_value_heads * value_dim], head h in
        channels [h * value_dim, (h + 1) * value_dim). Default: the head outputs (`head_output_modules`' input)."""
        return [(layer, module, lambda inputs, output: inputs[0]) for layer, module in self.head_output_modules()]

    # -- surgery (the engine is `hf_rankprune.surgery`) -------------------------------------------------------------
    def canonical_weights(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The canonical weights (`head_axes`) of a layer `module` (stock or ragged) from its tensors by name."""
        raise NotImplementedError

    def stock_state(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict of a stock layer holding canonical `weights` (equal consecutive groups)."""
        raise NotImplementedError

    def ragged_state(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict of a ragged layer holding canonical `weights` (with `value_to_key`)."""
        raise NotImplementedError

    def build_stock_layer(self, layer_index: int) -> nn.Module:
        """A stock layer for `layer_index` with the config's head counts (built on the meta device by the caller)."""
        raise NotImplementedError

    def build_ragged_layer(self, layer_index: int, num_key_heads: int, num_value_heads: int, value_to_key) -> nn.Module:
        """A ragged layer for `layer_index` (built on the meta device by the caller)."""
        return self.ragged_layer_class()(self.config, layer_index, num_key_heads, num_value_heads, value_to_key)

    def ragged_layer_options(self) -> dict:
        """Options of the ragged layer that differ by family, stored in the config (`rankprune_layer_options`)."""
        return {}

    def prepare_save(self) -> None:
        """Called by `save_pruned` right before `save_pretrained`: a family whose checkpoint conversion needs the
        model's help to write its on-disk form fixes it here (default: nothing to do)."""


def select_heads(weights: dict[str, torch.Tensor], head_axes: dict, layer_plan) -> dict[str, torch.Tensor]:
    """Canonical weights restricted to the heads `layer_plan` keeps (in its physical order, key heads possibly
    repeated), following the adapter's layout spec; adds the plan's value->key map."""
    kept = {KEY: layer_plan.kept_key_heads, VALUE: layer_plan.kept_value_heads}
    out = {}
    for name, tensor in weights.items():
        if name == "value_to_key":
            continue
        if name not in head_axes:
            raise AdapterError(f"canonical weight {name!r} has no entry in the adapter's head_axes layout spec.")
        axis = head_axes[name]
        if axis is None:
            out[name] = tensor
            continue
        kind, dim = axis
        index = torch.tensor(kept[kind], dtype=torch.long, device=tensor.device)
        out[name] = tensor.index_select(dim, index).contiguous()
    out["value_to_key"] = torch.tensor(layer_plan.value_to_key, dtype=torch.long)
    return out
