"""`PrunePlan`: which linear-attention heads a pruned model keeps, why, and what it saves.

A plan lists, per linear-attention layer, the value heads kept (original indices), the key heads kept (a key head
goes when all its value heads go) and the value->key map of the kept heads (for each kept value head, an index into
the kept key heads). The lists are the pruned layer's physical layout: plans chosen by scores keep heads in their
original order, and a stock layout (`PrunePlan.to_stock_layout`) may reorder value heads and repeat key heads so that
every layer has equal consecutive groups. It also carries the scores and settings that chose it, enough model geometry for memory
accounting, and serialises to JSON. A pruned model stores its plan in `config.rankprune_plan`, always relative to the
ORIGINAL model: pruning twice composes the plans (`PrunePlan.compose`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import PlanError  # noqa: F401 (re-exported)
from .memory import LayerMemory, PlanMemory, plan_memory  # noqa: F401 (re-exported)

PLAN_VERSION = 1
CONFIG_KEY = "rankprune_plan"
ORIGINAL_MODEL_KEY = "original_model"  # settings key: the folder or Hub id the plan's model was loaded from
DEMO_ORIGINAL = "hf_rankprune:demo_model"  # how a plan names the embedded demo model (its path differs per machine)



def consecutive_value_to_key(num_key_heads: int, num_value_heads: int) -> list[int]:
    """The stock grouping: value head j reads key head j // (num_value_heads // num_key_heads)."""
    if num_key_heads < 1 or num_value_heads % num_key_heads:
        raise PlanError(f"{num_value_heads} value heads cannot be grouped evenly over {num_key_heads} key heads.")
    ratio = num_value_heads // num_key_heads
    return [j // ratio for j in range(num_value_heads)]


@dataclass
class LayerPlan:
    """What one linear-attention layer keeps.

    Attributes:
        layer: index of the layer among the model's decoder layers.
        num_key_heads / num_value_heads / key_dim / value_dim: the layer before pruning.
        kept_value_heads: indices (in the layer before pruning) of the value heads kept, in the pruned layer's order
            (sorted, unless a stock layout regrouped them).
        kept_key_heads: indices of the key heads kept (those read by a kept value head), in the pruned layer's
            order; a stock layout may repeat one (a replica: the same q/k weights serving two groups).
        value_to_key: for each kept value head, the index into `kept_key_heads` of the key head it reads.
        source_value_to_key: the value->key map of the layer before pruning (None: stock consecutive grouping).
    """

    layer: int
    num_key_heads: int
    num_value_heads: int
    key_dim: int
    value_dim: int
    kept_value_heads: list[int]
    kept_key_heads: list[int] = field(default_factory=list)
    value_to_key: list[int] = field(default_factory=list)
    source_value_to_key: list[int] | None = None

    @classmethod
    def from_kept(
        cls,
        layer: int,
        num_key_heads: int,
        num_value_heads: int,
        key_dim: int,
        value_dim: int,
        kept_value_heads: Iterable[int],
        source_value_to_key: Sequence[int] | None = None,
    ) -> LayerPlan:
        """Derive kept key heads and the value->key map from the kept value heads."""
        kept = [int(j) for j in kept_value_heads]
        if len(set(kept)) != len(kept):
            raise PlanError(f"layer {layer}: duplicate value heads in {kept}.")
        bad = [j for j in kept if not 0 <= j < num_value_heads]
        if bad:
            raise PlanError(f"layer {layer}: value heads {bad} are out of range (the layer has {num_value_heads}).")
        if not kept:
            raise PlanError(f"layer {layer}: the plan would remove every value head (a layer cannot be emptied).")
        kept = sorted(kept)
        source = list(source_value_to_key) if source_value_to_key is not None else None
        source_map = source if source is not None else consecutive_value_to_key(num_key_heads, num_value_heads)
        kept_keys = sorted({source_map[j] for j in kept})
        position = {key: i for i, key in enumerate(kept_keys)}
        plan = cls(
            layer=int(layer),
            num_key_heads=int(num_key_heads),
            num_value_heads=int(num_value_heads),
            key_dim=int(key_dim),
            value_dim=int(value_dim),
            kept_value_heads=kept,
            kept_key_heads=kept_keys,
            value_to_key=[position[source_map[j]] for j in kept],
            source_value_to_key=source,
        )
        plan.check()
        return plan

    # -- derived -------------------------------------------------------------------------------------------------
    def source_map(self) -> list[int]:
        if self.source_value_to_key is not None:
            return list(self.source_value_to_key)
        return consecutive_value_to_key(self.num_key_heads, self.num_value_heads)

    @property
    def num_kept_value_heads(self) -> int:
        return len(self.kept_value_heads)

    @property
    def num_kept_key_heads(self) -> int:
        return len(self.kept_key_heads)

    @property
    def removed_value_heads(self) -> list[int]:
        kept = set(self.kept_value_heads)
        return [j for j in range(self.num_value_heads) if j not in kept]

    @property
    def removed_key_heads(self) -> list[int]:
        kept = set(self.kept_key_heads)
        return [k for k in range(self.num_key_heads) if k not in kept]

    @property
    def num_replicated_key_heads(self) -> int:
        """Key heads kept twice or more by a stock layout (extra copies, not counting the first)."""
        return len(self.kept_key_heads) - len(set(self.kept_key_heads))

    @property
    def is_pruned(self) -> bool:
        """The layer differs from the original one: heads removed, or regrouped by a stock layout."""
        return self.kept_value_heads != list(range(self.num_value_heads)) or self.kept_key_heads != list(
            range(self.num_key_heads)
        )

    def group_sizes(self) -> list[int]:
        """Number of kept value heads reading each kept key head."""
        sizes = [0] * self.num_kept_key_heads
        for k in self.value_to_key:
            sizes[k] += 1
        return sizes

    def is_consecutive_uniform(self) -> bool:
        """Kept heads form equal, consecutive groups: the stock `j // r` grouping describes the pruned layer."""
        sizes = self.group_sizes()
        if not sizes or len(set(sizes)) != 1:
            return False
        return self.value_to_key == consecutive_value_to_key(self.num_kept_key_heads, self.num_kept_value_heads)

    # -- validation ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise `PlanError` unless the layer plan is internally consistent."""
        where = f"layer {self.layer}"
        for name in ("num_key_heads", "num_value_heads", "key_dim", "value_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlanError(f"{where}: {name}={value!r} must be a positive integer.")
        kept = self.kept_value_heads
        if not kept:
            raise PlanError(f"{where}: the plan would remove every value head (a layer cannot be emptied).")
        if len(set(kept)) != len(kept):
            raise PlanError(f"{where}: duplicate value heads in {kept}.")
        bad = [j for j in kept if not 0 <= j < self.num_value_heads]
        if bad:
            raise PlanError(f"{where}: value heads {bad} are out of range (the layer has {self.num_value_heads}).")
        keys = self.kept_key_heads
        bad = [k for k in keys if not 0 <= k < self.num_key_heads]
        if bad:
            raise PlanError(f"{where}: key heads {bad} are out of range (the layer has {self.num_key_heads}).")
        source = self.source_map()
        if len(source) != self.num_value_heads or any(not 0 <= k < self.num_key_heads for k in source):
            raise PlanError(f"{where}: source value->key map {source} does not fit the layer.")
        expected_keys = sorted({source[j] for j in kept})
        if sorted(set(keys)) != expected_keys:
            raise PlanError(
                f"{where}: kept key heads {keys} differ from those the kept value heads read ({expected_keys})."
            )
        if len(self.value_to_key) != len(kept) or any(
            not 0 <= m < len(keys) or keys[m] != source[j] for m, j in zip(self.value_to_key, kept, strict=False)
        ):
            raise PlanError(f"{where}: value_to_key {self.value_to_key} is inconsistent with the kept heads.")
        if set(self.value_to_key) != set(range(len(keys))):
            raise PlanError(f"{where}: kept key heads {keys} include one that no kept value head reads.")

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = {
            "layer": self.layer,
            "num_key_heads": self.num_key_heads,
            "num_value_heads": self.num_value_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "kept_value_heads": list(self.kept_value_heads),
            "kept_key_heads": list(self.kept_key_heads),
            "value_to_key": list(self.value_to_key),
        }
        if self.source_value_to_key is not None:
            values["source_value_to_key"] = list(self.source_value_to_key)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LayerPlan:
        try:
            plan = cls(
                layer=int(values["layer"]),
                num_key_heads=int(values["num_key_heads"]),
                num_value_heads=int(values["num_value_heads"]),
                key_dim=int(values["key_dim"]),
                value_dim=int(values["value_dim"]),
                kept_value_heads=[int(j) for j in values["kept_value_heads"]],
                kept_key_heads=[int(k) for k in values["kept_key_heads"]],
                value_to_key=[int(m) for m in values["value_to_key"]],
                source_value_to_key=(
                    [int(k) for k in values["source_value_to_key"]]
                    if values.get("source_value_to_key") is not None
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PlanError(f"Malformed layer plan {dict(values)!r}: {error}") from error
        plan.check()
        return plan


@dataclass(frozen=True)
class LayerGeometry:
    """One linear-attention layer as a plan sees it: head counts, head dims and (when not the stock consecutive
    grouping) the value->key map of the layer as it is now."""

    index: int
    num_key_heads: int
    num_value_heads: int
    key_dim: int
    value_dim: int
    value_to_key: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ModelGeometry:
    """What a plan is built from and checked against: the model type, its linear layers (by index), and the
    geometry memory accounting needs (`model_info`, see `hf_rankprune.memory`). Adapters produce it
    (`LinearAttentionAdapter.geometry()`); plans never look at a model."""

    model_type: str
    layers: tuple[LayerGeometry, ...]
    model_info: dict[str, Any] = field(default_factory=dict)

    def layer_map(self) -> dict[int, LayerGeometry]:
        return {layer.index: layer for layer in self.layers}


def _geometry(source: Any) -> ModelGeometry:
    """`source` as a `ModelGeometry`: one already, or anything with a `geometry()` method (an adapter)."""
    if isinstance(source, ModelGeometry):
        return source
    geometry = getattr(source, "geometry", None)
    if callable(geometry):
        return geometry()
    raise PlanError(
        f"a plan is built from a ModelGeometry, got {type(source).__name__}: pass "
        "hf_rankprune.get_adapter(model).geometry() (or hf_rankprune.model_geometry(model))."
    )


@dataclass
class PrunePlan:
    """Per linear-attention layer, the heads a pruned model keeps; plus why (scores, settings) and model geometry.

    Layer plans are relative to the model the plan is applied to. A plan stored in a pruned model's config is
    relative to the original (unpruned) model.
    """

    model_type: str
    layers: list[LayerPlan]
    scores: dict[int, list[float | None]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        self.layers = sorted(self.layers, key=lambda layer: layer.layer)
        if self.scores is not None:
            self.scores = {int(k): list(v) for k, v in self.scores.items()}
        self.check()

    # -- constructors --------------------------------------------------------------------------------------------
    @classmethod
    def from_kept_heads(
        cls,
        geometry: ModelGeometry,
        kept_value_heads: Mapping[int, Iterable[int]],
        *,
        scores: Mapping[int, Sequence[float]] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> PrunePlan:
        """A plan keeping `kept_value_heads[layer]` (indices in the given model) in each listed linear layer.

        Linear layers not listed keep all their heads. Key heads whose value heads all go are dropped.
        """
        geometry = _geometry(geometry)
        infos = geometry.layer_map()
        unknown = sorted(set(int(i) for i in kept_value_heads) - set(infos))
        if unknown:
            raise PlanError(f"layers {unknown} are not linear-attention layers of the model (those are {sorted(infos)}).")
        requested = {int(i): heads for i, heads in kept_value_heads.items()}
        layers = []
        for index, info in infos.items():
            kept = requested.get(index, range(info.num_value_heads))
            layers.append(
                LayerPlan.from_kept(
                    index,
                    info.num_key_heads,
                    info.num_value_heads,
                    info.key_dim,
                    info.value_dim,
                    kept,
                    source_value_to_key=_non_consecutive(info),
                )
            )
        return cls(
            model_type=geometry.model_type,
            layers=layers,
            scores={int(k): [float(x) for x in v] for k, v in scores.items()} if scores is not None else None,
            settings=dict(settings or {}),
            model_info=copy.deepcopy(geometry.model_info),
        )

    @classmethod
    def from_removed_heads(
        cls, geometry: ModelGeometry, removed_value_heads: Mapping[int, Iterable[int]], **kwargs: Any
    ) -> PrunePlan:
        """Like `from_kept_heads`, naming the value heads to remove in each listed layer instead."""
        geometry = _geometry(geometry)
        infos = geometry.layer_map()
        kept = {}
        for index, removed in removed_value_heads.items():
            if int(index) not in infos:
                raise PlanError(f"layer {index} is not a linear-attention layer of the model (those are {sorted(infos)}).")
            removed = {int(j) for j in removed}
            kept[int(index)] = [j for j in range(infos[int(index)].num_value_heads) if j not in removed]
        return cls.from_kept_heads(geometry, kept, **kwargs)

    @classmethod
    def identity(cls, geometry: ModelGeometry) -> PrunePlan:
        """The plan that keeps every head."""
        return cls.from_kept_heads(geometry, {})

    @classmethod
    def from_config(cls, config) -> PrunePlan | None:
        """The plan recorded in a pruned model's config (relative to the original model), or None."""
        for candidate in (config, getattr(config, "get_text_config", lambda: None)()):
            values = getattr(candidate, CONFIG_KEY, None) if candidate is not None else None
            if values:
                return cls.from_dict(values)
        return None

    # -- derived -------------------------------------------------------------------------------------------------
    def layer(self, index: int) -> LayerPlan:
        for layer in self.layers:
            if layer.layer == index:
                return layer
        raise KeyError(index)

    @property
    def original_model(self) -> str | None:
        """The model this plan was cut from, as recorded at pruning time (the first step's, for a composed plan):
        a Hub id, a local folder, or DEMO_ORIGINAL; None when it was not recorded. Recovery's default teacher."""
        first = (self.settings.get("steps") or [self.settings])[0] if self.settings else {}
        return first.get(ORIGINAL_MODEL_KEY)

    @property
    def layer_indices(self) -> list[int]:
        return [layer.layer for layer in self.layers]

    @property
    def pruned_layers(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.is_pruned]

    @property
    def num_value_heads(self) -> int:
        return sum(layer.num_value_heads for layer in self.layers)

    @property
    def num_kept_value_heads(self) -> int:
        return sum(layer.num_kept_value_heads for layer in self.layers)

    @property
    def num_removed_value_heads(self) -> int:
        return self.num_value_heads - self.num_kept_value_heads

    @property
    def removed_fraction(self) -> float:
        return self.num_removed_value_heads / self.num_value_heads if self.num_value_heads else 0.0

    @property
    def is_uniform(self) -> bool:
        """Every layer keeps the same numbers of value and key heads, in equal consecutive groups.

        Such a plan is expressible by a stock config (linear_num_value_heads / linear_num_key_heads), so stock
        transformers loads the pruned model.
        """
        if not self.layers:
            return True
        counts = {(layer.num_kept_value_heads, layer.num_kept_key_heads) for layer in self.layers}
        return len(counts) == 1 and all(layer.is_consecutive_uniform() for layer in self.layers)

    @property
    def loads_in_stock(self) -> bool:
        """A uniform plan whose family's config can state the pruned head counts (`model_info["stock_uniform"]`,
        False where the config derives its widths from hidden_size * expand): stock transformers loads the result."""
        return self.is_uniform and bool(self.model_info.get("stock_uniform", True))

    @property
    def is_identity(self) -> bool:
        return not self.pruned_layers

    @property
    def num_replicated_key_heads(self) -> int:
        """Extra key-head copies a stock layout added, over all layers (their q/k weights and conv state)."""
        return sum(layer.num_replicated_key_heads for layer in self.layers)

    @property
    def replicated_parameters(self) -> int | None:
        """q/k projection weights the key-head copies of a stock layout add (None when the hidden size is unknown)."""
        hidden = self.model_info.get("hidden_size")
        if not hidden:
            return None
        return sum(2 * layer.num_replicated_key_heads * layer.key_dim * hidden for layer in self.layers)

    # -- layouts -------------------------------------------------------------------------------------------------
    def to_stock_layout(self) -> PrunePlan:
        """The same kept heads laid out as a stock configuration of the original family.

        Every layer must keep the same number of value heads. Value heads are regrouped by the key head they read,
        and a key head whose group would be larger than the others is replicated (its q/k projection rows and conv
        channels copied), so that every layer has `num_kept_value_heads / group` equal consecutive groups of `group`
        value heads. `group` is the greatest common divisor of all group sizes: the least replication. The pruned
        model is exact (each value head still reads the same key head's weights) and stock transformers, vLLM and
        SGLang load it from its config alone.
        """
        counts = sorted({layer.num_kept_value_heads for layer in self.layers})
        if len(counts) > 1:
            raise PlanError(
                f"a stock layout needs the same number of value heads in every linear layer; this plan keeps {counts} "
                "in different layers. Use budget='per_layer' (--budget per_layer), which keeps equal counts with "
                "layout='stock', and no protected_layers; or keep layout='auto' for a ragged checkpoint."
            )
        group = math.gcd(*(size for layer in self.layers for size in layer.group_sizes()))
        layers = []
        for layer in self.layers:
            source = layer.source_map()
            by_key: dict[int, list[int]] = {}
            for head in layer.kept_value_heads:
                by_key.setdefault(source[head], []).append(head)
            values, keys, value_to_key = [], [], []
            for key in sorted(by_key):
                heads = sorted(by_key[key])
                for start in range(0, len(heads), group):
                    keys.append(key)
                    values.extend(heads[start : start + group])
                    value_to_key.extend([len(keys) - 1] * group)
            stock = copy.deepcopy(layer)
            stock.kept_value_heads, stock.kept_key_heads, stock.value_to_key = values, keys, value_to_key
            stock.check()
            layers.append(stock)
        settings = dict(self.settings)
        settings.update(layout="stock", replicated_key_heads=sum(la.num_replicated_key_heads for la in layers))
        plan = PrunePlan(
            model_type=self.model_type,
            layers=layers,
            scores=copy.deepcopy(self.scores),
            settings=settings,
            model_info=dict(self.model_info),
        )
        if not plan.is_uniform:  # guards the construction above
            raise PlanError("internal error: the stock layout is not uniform.")
        return plan

    # -- validation ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise `PlanError` unless the plan is internally consistent."""
        seen = set()
        for layer in self.layers:
            if not isinstance(layer, LayerPlan):
                raise PlanError(f"PrunePlan.layers must hold LayerPlan objects, got {type(layer).__name__}.")
            if layer.layer in seen:
                raise PlanError(f"layer {layer.layer} appears twice in the plan.")
            seen.add(layer.layer)
            layer.check()

    def validate_for(self, geometry: ModelGeometry) -> None:
        """Raise `PlanError` unless this plan fits the model of `geometry` (same linear layers, head counts, dims
        and grouping)."""
        infos = _geometry(geometry).layer_map()
        plan_layers = {layer.layer: layer for layer in self.layers}
        if set(plan_layers) != set(infos):
            raise PlanError(
                f"plan made for another model: its linear layers are {sorted(plan_layers)}, the model's are "
                f"{sorted(infos)}."
            )
        for index, info in infos.items():
            layer = plan_layers[index]
            for what, model_value, plan_value in (
                ("value heads", info.num_value_heads, layer.num_value_heads),
                ("key heads", info.num_key_heads, layer.num_key_heads),
                ("key head dim", info.key_dim, layer.key_dim),
                ("value head dim", info.value_dim, layer.value_dim),
            ):
                if model_value != plan_value:
                    raise PlanError(
                        f"plan made for another model: layer {index} has {model_value} {what} in the model, the plan "
                        f"expects {plan_value}."
                    )
            if _non_consecutive(info) is not None or layer.source_value_to_key is not None:
                model_map = _non_consecutive(info) or consecutive_value_to_key(
                    info.num_key_heads, info.num_value_heads
                )
                if model_map != layer.source_map():
                    raise PlanError(
                        f"plan made for another model: layer {index} groups its value heads over key heads as "
                        f"{model_map} in the model, the plan expects {layer.source_map()}."
                    )

    # -- composition ---------------------------------------------------------------------------------------------
    def compose(self, next_plan: PrunePlan) -> PrunePlan:
        """The plan equivalent to applying `self`, then `next_plan` (made for the model `self` produced).

        The result is expressed in the indices of the model `self` was made for.
        """
        mine = {layer.layer: layer for layer in self.layers}
        theirs = {layer.layer: layer for layer in next_plan.layers}
        unknown = sorted(set(theirs) - set(mine))
        if unknown:
            raise PlanError(f"cannot compose: layers {unknown} of the second plan are not in the first.")
        layers = []
        scores: dict[int, list[float | None]] = {}
        for index, first in mine.items():
            second = theirs.get(index)
            old_scores = (self.scores or {}).get(index)
            if second is None:
                layers.append(copy.deepcopy(first))
                if old_scores is not None:
                    scores[index] = list(old_scores)
                continue
            if (second.num_value_heads, second.num_key_heads) != (first.num_kept_value_heads, first.num_kept_key_heads):
                raise PlanError(
                    f"cannot compose: layer {index} keeps {first.num_kept_value_heads} value / "
                    f"{first.num_kept_key_heads} key heads after the first plan, the second plan expects "
                    f"{second.num_value_heads} / {second.num_key_heads}."
                )
            if second.source_map() != first.value_to_key:
                raise PlanError(f"cannot compose: layer {index} grouping of the second plan differs from the first's.")
            layer = LayerPlan(
                layer=index,
                num_key_heads=first.num_key_heads,
                num_value_heads=first.num_value_heads,
                key_dim=first.key_dim,
                value_dim=first.value_dim,
                kept_value_heads=[first.kept_value_heads[j] for j in second.kept_value_heads],
                kept_key_heads=[first.kept_key_heads[k] for k in second.kept_key_heads],
                value_to_key=list(second.value_to_key),
                source_value_to_key=copy.copy(first.source_value_to_key),
            )
            layer.check()
            layers.append(layer)
            new_scores = (next_plan.scores or {}).get(index)
            if old_scores is not None or new_scores is not None:
                merged: list[float | None] = (
                    list(old_scores) if old_scores is not None else [None] * first.num_value_heads
                )
                if new_scores is not None:
                    for j, score in zip(first.kept_value_heads, new_scores, strict=False):
                        merged[j] = score
                scores[index] = merged
        steps = list(self.settings.get("steps", [self.settings])) if self.settings else []
        return PrunePlan(
            model_type=self.model_type,
            layers=layers,
            scores=scores or None,
            settings={"steps": steps + [dict(next_plan.settings)]},
            model_info=dict(self.model_info),
        )

    # -- memory --------------------------------------------------------------------------------------------------
    def memory(
        self,
        context_length: int = 0,
        batch_size: int = 1,
        state_dtype: torch.dtype | str = torch.float32,
        kv_dtype: torch.dtype | str | None = None,
        conv_dtype: torch.dtype | str | None = None,
    ) -> PlanMemory:
        """State bytes before/after pruning, per linear layer and in total, plus the attention caches (the one
        formula, `hf_rankprune.memory`)."""
        return plan_memory(self, context_length, batch_size, state_dtype, kv_dtype, conv_dtype)

    def capacity(self, budget_bytes: int, context_length: int) -> list[dict[str, Any]]:
        """How many sequences of `context_length` tokens fit in `budget_bytes` of inference state (linear state +
        conv state + full-attention KV cache), for the original and the pruned model, with the linear state in fp32
        (the kernels' default) and in bf16 (vLLM `mamba_ssm_cache_dtype`, SGLang `--mamba-ssm-dtype`): the free
        baseline that pruning composes with. Rows: model, state_dtype, bytes_per_sequence, sequences."""
        rows = []
        for state_dtype in ("float32", "bfloat16"):
            memory = self.memory(context_length=context_length, state_dtype=state_dtype)
            for model, per_sequence in (("original", memory.total_bytes_before), ("pruned", memory.total_bytes_after)):
                rows.append(
                    {
                        "model": model,
                        "state_dtype": state_dtype,
                        "bytes_per_sequence": per_sequence,
                        "sequences": int(budget_bytes // per_sequence) if per_sequence else 0,
                    }
                )
        return sorted(rows, key=lambda row: (row["model"] != "original", row["state_dtype"] != "float32"))

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_type": self.model_type,
            "is_uniform": self.is_uniform,
            "num_value_heads": self.num_value_heads,
            "num_removed_value_heads": self.num_removed_value_heads,
            "layers": [layer.to_dict() for layer in self.layers],
            "scores": {str(k): list(v) for k, v in self.scores.items()} if self.scores is not None else None,
            "settings": copy.deepcopy(self.settings),
            "model_info": copy.deepcopy(self.model_info),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PrunePlan:
        if not isinstance(values, Mapping):
            raise PlanError(f"PrunePlan.from_dict needs a mapping, got {type(values).__name__}.")
        version = int(values.get("version", PLAN_VERSION))
        if version > PLAN_VERSION:
            raise PlanError(f"plan format version {version} is newer than this hf_rankprune ({PLAN_VERSION}).")
        try:
            layers = [LayerPlan.from_dict(layer) for layer in values["layers"]]
            model_type = str(values["model_type"])
        except KeyError as error:
            raise PlanError(f"Malformed plan: missing {error}.") from error
        scores = values.get("scores")
        return cls(
            model_type=model_type,
            layers=layers,
            scores={int(k): list(v) for k, v in scores.items()} if scores is not None else None,
            settings=dict(values.get("settings") or {}),
            model_info=dict(values.get("model_info") or {}),
            version=version,
        )

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string() + "\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PrunePlan:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def summary(self) -> str:
        """One line per layer: kept/total value and key heads."""
        lines = [
            f"PrunePlan({self.model_type}): {self.num_removed_value_heads}/{self.num_value_heads} value heads removed "
            f"({100 * self.removed_fraction:.1f}%), {'uniform' if self.is_uniform else 'ragged'}"
        ]
        for layer in self.layers:
            lines.append(
                f"  layer {layer.layer}: value heads {layer.num_kept_value_heads}/{layer.num_value_heads}, "
                f"key heads {layer.num_kept_key_heads}/{layer.num_key_heads}, groups {layer.group_sizes()}"
            )
        return "\n".join(lines)


def _non_consecutive(layer: LayerGeometry) -> list[int] | None:
    """The layer's value->key map when it is not the stock consecutive grouping, else None."""
    if layer.value_to_key is None:
        return None
    mapping = [int(k) for k in layer.value_to_key]
    if layer.num_value_heads % layer.num_key_heads == 0 and mapping == consecutive_value_to_key(
        layer.num_key_heads, layer.num_value_heads
    ):
        return None
    return mapping
