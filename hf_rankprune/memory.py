"""The one memory formula: bytes of inference state per sequence, for every cache kind these models hold.

Used by the plan (and so the CLI, the card and the capacity table), the budgets of `scoring`, the probe and
`eval --tasks memory`, so every figure the tool prints agrees. Geometry comes from the adapter
(`LinearAttentionAdapter.model_info`), stored in the plan's `model_info`:

- a linear layer's recurrent state: `state_elements_per_head` per kept head (d_k * d_v for a delta rule, P * N for
  an SSD head), in the state dtype (fp32 in the kernels; bf16 where servers store it);
- its convolution state: `conv_kernel_size` columns of `conv_channels_per_key_head * kept key heads +
  conv_channels_per_value_head * kept value heads` channels, in the model dtype (transformers keeps all
  `conv_kernel_size` columns);
- attention caches (`attention_caches`): per group of layers, `elements_per_token` (2 * kv heads * head dim, plus an
  indexer's keys; a group may name its own `dtype`, e.g. int64 position ids) times the tokens it keeps: all of them (full, indexed), or at most `window` (sliding: the
  adapter states how many tokens the cache keeps);
- fixed states (`fixed_states`): per group of layers, `elements` per sequence that neither grow with the context nor
  depend on the heads (Qwen4-Exp's PLE n-gram convolutions), in the model dtype or the group's own `dtype`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import PlanError


def dtype_name(dtype: torch.dtype | str | None) -> str | None:
    if dtype is None:
        return None
    return str(dtype).replace("torch.", "")


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of `dtype` (a torch dtype or its name)."""
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.replace("torch.", ""), None)
        if not isinstance(resolved, torch.dtype):
            raise PlanError(f"Unknown dtype {dtype!r}.")
        dtype = resolved
    return torch.empty((), dtype=dtype).element_size()


def state_elements_per_head(layer: Any) -> int:
    """Elements of one head's recurrent state (a `LayerPlan` or layer geometry: key_dim x value_dim)."""
    return int(layer.key_dim) * int(layer.value_dim)


def head_state_bytes(layers: Sequence[Any], dtype: torch.dtype | str = torch.float32) -> list[int]:
    """Per layer, the bytes one head's state takes per sequence (what budgets in bytes count)."""
    size = dtype_bytes(dtype)
    return [state_elements_per_head(layer) * size for layer in layers]


def conv_channels(model_info: Mapping[str, Any], layer: Any, key_heads: int, value_heads: int) -> int:
    """Channels of a linear layer's convolution state with `key_heads` / `value_heads` heads."""
    per_key = model_info.get("conv_channels_per_key_head")
    per_value = model_info.get("conv_channels_per_value_head")
    if per_key is None or per_value is None:  # plans written before the adapter recorded them: a delta rule's q, k, v
        per_key, per_value = 2 * layer.key_dim, layer.value_dim
    return int(per_key) * key_heads + int(per_value) * value_heads


def attention_caches(model_info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The attention cache groups of `model_info` (plans written before `attention_caches` existed: full attention)."""
    caches = model_info.get("attention_caches")
    if caches is not None:
        return list(caches)
    layers = model_info.get("full_attention_layers") or []
    per_token = 2 * (model_info.get("num_key_value_heads") or 0) * (model_info.get("head_dim") or 0)
    return [{"kind": "full_attention", "layers": list(layers), "elements_per_token": per_token, "window": None}]


def attention_layer_bytes(cache: Mapping[str, Any], context_length: int, batch_size: int, dtype) -> int:
    """Bytes of one layer of the attention cache group `cache` for `batch_size` sequences of `context_length` tokens,
    in `dtype` unless the group names its own (`"dtype"`: bookkeeping such as int64 position ids)."""
    window = cache.get("window")
    tokens = min(int(context_length), int(window)) if window else int(context_length)
    return batch_size * int(cache["elements_per_token"]) * tokens * dtype_bytes(cache.get("dtype") or dtype)


def attention_cache_bytes(model_info: Mapping[str, Any], context_length: int, batch_size: int, dtype) -> int:
    """Bytes of every attention cache for `batch_size` sequences of `context_length` tokens."""
    caches = attention_caches(model_info)
    return sum(len(cache["layers"]) * attention_layer_bytes(cache, context_length, batch_size, dtype) for cache in caches)


def fixed_state_bytes(model_info: Mapping[str, Any], batch_size: int, dtype) -> dict[int, int]:
    """Per layer, the bytes of the fixed states `model_info` lists (`fixed_states`) for `batch_size` sequences."""
    per_layer: dict[int, int] = {}
    for group in model_info.get("fixed_states") or ():
        size = batch_size * int(group["elements"]) * dtype_bytes(group.get("dtype") or dtype)
        for index in group["layers"]:
            per_layer[index] = per_layer.get(index, 0) + size
    return per_layer


def linear_layer_bytes(
    model_info: Mapping[str, Any], layer: Any, key_heads: int, value_heads: int, batch_size: int, state_dtype, conv_dtype
) -> tuple[int, int]:
    """(recurrent state, convolution state) bytes of a linear layer with `key_heads` / `value_heads` heads, for
    `batch_size` sequences."""
    state = batch_size * value_heads * state_elements_per_head(layer) * dtype_bytes(state_dtype)
    kernel = int(model_info.get("conv_kernel_size") or 0)
    conv = batch_size * conv_channels(model_info, layer, key_heads, value_heads) * kernel * dtype_bytes(conv_dtype)
    return state, conv


def _model_dtype(model_info: Mapping[str, Any], dtype):
    """`dtype`, or the model dtype `model_info` records (conv states and attention caches are kept in it)."""
    return dtype if dtype is not None else (model_info.get("dtype") or "float32")


@dataclass
class LayerMemory:
    layer: int
    state_bytes_before: int
    state_bytes_after: int
    conv_bytes_before: int
    conv_bytes_after: int


@dataclass
class PlanMemory:
    """Bytes of inference state for `batch_size` sequences of `context_length` tokens, before and after pruning.

    `state_bytes_*` is the linear-attention recurrent state: the paper's figure. `conv_bytes_*` is the linear layers'
    short-convolution state; `kv_cache_bytes` the attention caches and `fixed_bytes` the fixed states (neither
    changed by pruning). `total_bytes_*` adds them all: the whole-model figure.
    """

    context_length: int
    batch_size: int
    state_dtype: str
    conv_dtype: str
    kv_dtype: str
    layers: list[LayerMemory]
    state_bytes_before: int
    state_bytes_after: int
    conv_bytes_before: int
    conv_bytes_after: int
    kv_cache_bytes: int
    fixed_bytes: int = 0

    @property
    def total_bytes_before(self) -> int:
        return self.state_bytes_before + self.conv_bytes_before + self.kv_cache_bytes + self.fixed_bytes

    @property
    def total_bytes_after(self) -> int:
        return self.state_bytes_after + self.conv_bytes_after + self.kv_cache_bytes + self.fixed_bytes

    @property
    def state_reduction(self) -> float:
        """Fraction of the linear recurrent state removed (the paper's 38.9%)."""
        return 1.0 - self.state_bytes_after / self.state_bytes_before if self.state_bytes_before else 0.0

    @property
    def total_reduction(self) -> float:
        return 1.0 - self.total_bytes_after / self.total_bytes_before if self.total_bytes_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "context_length": self.context_length,
            "batch_size": self.batch_size,
            "state_dtype": self.state_dtype,
            "conv_dtype": self.conv_dtype,
            "kv_dtype": self.kv_dtype,
            "layers": [vars(layer).copy() for layer in self.layers],
            "state_bytes_before": self.state_bytes_before,
            "state_bytes_after": self.state_bytes_after,
            "conv_bytes_before": self.conv_bytes_before,
            "conv_bytes_after": self.conv_bytes_after,
            "kv_cache_bytes": self.kv_cache_bytes,
            "fixed_bytes": self.fixed_bytes,
            "total_bytes_before": self.total_bytes_before,
            "total_bytes_after": self.total_bytes_after,
            "state_reduction": self.state_reduction,
            "total_reduction": self.total_reduction,
        }


def plan_memory(
    plan: Any,
    context_length: int = 0,
    batch_size: int = 1,
    state_dtype: torch.dtype | str = torch.float32,
    kv_dtype: torch.dtype | str | None = None,
    conv_dtype: torch.dtype | str | None = None,
) -> PlanMemory:
    """Memory of the original (`*_before`) and pruned (`*_after`) model of `plan` (a `PrunePlan`); conv and
    attention caches default to the model dtype the plan records."""
    info = plan.model_info
    kv_dtype, conv_dtype = _model_dtype(info, kv_dtype), _model_dtype(info, conv_dtype)
    layers = []
    for layer in plan.layers:
        state_before, conv_before = linear_layer_bytes(
            info, layer, layer.num_key_heads, layer.num_value_heads, batch_size, state_dtype, conv_dtype
        )
        state_after, conv_after = linear_layer_bytes(
            info, layer, layer.num_kept_key_heads, layer.num_kept_value_heads, batch_size, state_dtype, conv_dtype
        )
        layers.append(LayerMemory(layer.layer, state_before, state_after, conv_before, conv_after))
    return PlanMemory(
        context_length=int(context_length),
        batch_size=int(batch_size),
        state_dtype=dtype_name(state_dtype),
        conv_dtype=dtype_name(conv_dtype),
        kv_dtype=dtype_name(kv_dtype),
        layers=layers,
        state_bytes_before=sum(m.state_bytes_before for m in layers),
        state_bytes_after=sum(m.state_bytes_after for m in layers),
        conv_bytes_before=sum(m.conv_bytes_before for m in layers),
        conv_bytes_after=sum(m.conv_bytes_after for m in layers),
        kv_cache_bytes=attention_cache_bytes(info, context_length, batch_size, kv_dtype),
        fixed_bytes=sum(fixed_state_bytes(info, batch_size, conv_dtype).values()),
    )


def model_memory_layers(
    geometry: Any,
    context_length: int,
    batch_size: int = 1,
    state_dtype: torch.dtype | str = torch.float32,
    kv_dtype: torch.dtype | str | None = None,
    conv_dtype: torch.dtype | str | None = None,
) -> list[dict[str, Any]]:
    """One row per layer with a cache, for a model as it is now (`ModelGeometry`: per-layer head counts of pruned
    models included): its kind, heads and bytes of recurrent state, convolution state and attention cache for
    `batch_size` sequences of `context_length` tokens. Conv and attention caches default to the model dtype."""
    info = geometry.model_info
    kv_dtype, conv_dtype = _model_dtype(info, kv_dtype), _model_dtype(info, conv_dtype)
    rows = []
    for layer in geometry.layers:
        state, conv = linear_layer_bytes(
            info, layer, layer.num_key_heads, layer.num_value_heads, batch_size, state_dtype, conv_dtype
        )
        rows.append(_row(layer.index, "linear_attention", layer.num_value_heads, state, conv, 0))
    fixed = fixed_state_bytes(info, batch_size, conv_dtype)
    attention: dict[int, dict[str, Any]] = {}  # one row per layer, whatever groups its cache is counted in
    for cache in attention_caches(info):
        cache_bytes = attention_layer_bytes(cache, context_length, batch_size, kv_dtype)
        for index in cache["layers"]:
            attention.setdefault(index, _row(index, cache["kind"], 0, 0, 0, 0))["cache_bytes"] += cache_bytes
    rows = sorted([*rows, *attention.values()], key=lambda row: row["layer"])
    for row in rows:
        row["fixed_bytes"] = fixed.get(row["layer"], 0)
    return rows


def _row(layer: int, kind: str, num_heads: int, state_bytes: int, conv_bytes: int, cache_bytes: int) -> dict[str, Any]:
    return {"layer": layer, "kind": kind, "num_heads": num_heads, "state_bytes": state_bytes,
            "conv_bytes": conv_bytes, "cache_bytes": cache_bytes}  # fmt: skip
