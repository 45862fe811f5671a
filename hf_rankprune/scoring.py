"""From `RankStats` to a `PrunePlan`: head scores (Joint Rank-Norm and alternatives) and budget allocation.

Joint Rank-Norm (PAPER.md Eq. 14): score_h = alpha * rbar_h / d + (1 - alpha) * nbar_h / max_j nbar_j, where rbar and
nbar are the head's rank and norm aggregated over the calibration grid and samples. The paper removes the highest
scores (the most "saturated" heads); `direction` chooses the opposite or random heads instead.

The head-importance scores (kl, taylor, activation, decay; `hf_rankprune.output_scores`) go through the same budgets
(`plan_from_scores`). For every score, direction "saturated" removes the HIGHEST scores and "low_rank" the LOWEST;
an importance score is HIGH for an IMPORTANT head, so its default direction (`direction=None`) is "low_rank": the
least important heads go.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arch import LinearAttentionAdapter, get_adapter
from .config import IMPORTANCE_SCORES, RankPruneConfig
from .memory import head_state_bytes
from .plan import PlanError, PrunePlan
from .stats import NORM_METRIC_NAMES, RANK_METRIC_NAMES, RankStats, StatsError


def head_scores(stats: RankStats, config: RankPruneConfig) -> list[np.ndarray]:
    """Per linear layer, one score per value head (higher = more saturated), for the scores computed from rank
    statistics (joint, rank, norm, random); the importance scores come from `output_scores.importance_scores`."""
    if config.score in IMPORTANCE_SCORES:
        raise PlanError(
            f"score={config.score!r} is a head-importance score: it is measured on the model "
            "(hf_rankprune.output_scores.importance_scores, or RankPruner.plan()), not derived from rank statistics."
        )
    caps = stats.rank_caps
    if config.score == "random":
        generator = np.random.default_rng(config.seed)
        return [generator.random(heads) for heads in stats.num_heads]
    ranks = stats.head_means(RANK_METRIC_NAMES[config.rank_metric], aggregation=config.time_aggregation)
    norms = stats.head_means(NORM_METRIC_NAMES[config.norm], aggregation=config.time_aggregation)
    rank_term = [rank / cap for rank, cap in zip(ranks, caps)]
    largest = max(float(norm.max()) for norm in norms)
    norm_term = [norm / largest if largest > 0 else np.zeros_like(norm) for norm in norms]
    if config.score == "rank":
        return rank_term
    if config.score == "norm":
        return norm_term
    return [config.alpha * r + (1 - config.alpha) * n for r, n in zip(rank_term, norm_term)]


@dataclass(frozen=True)
class _Head:
    layer: int  # position in the list of linear layers
    head: int
    priority: float  # larger = removed first


def _removal_priorities(scores: list[np.ndarray], config: RankPruneConfig) -> list[np.ndarray]:
    direction = config.removal_direction()
    if direction == "saturated":
        return [np.asarray(s, dtype=float) for s in scores]
    if direction == "low_rank":
        return [-np.asarray(s, dtype=float) for s in scores]
    generator = np.random.default_rng(config.seed + 1)
    return [generator.random(len(s)) for s in scores]


def check_stats_match(stats: RankStats, adapter: LinearAttentionAdapter) -> None:
    """Refuse statistics that are not valid (see `RankStats.validate`) or were calibrated on another model (different
    linear layers, head counts or head sizes); the message says what differs."""
    stats.validate()
    layers = adapter.linear_layers()
    model_layers = [layer.index for layer in layers]
    model_heads = [layer.num_value_heads for layer in layers]
    model_caps = [layer.rank_cap for layer in layers]
    reason = None
    if stats.layers != model_layers:
        reason = f"they cover linear layers {stats.layers}, the model has linear layers {model_layers}"
    elif stats.num_heads != model_heads:
        index = next(i for i, (a, b) in enumerate(zip(stats.num_heads, model_heads)) if a != b)
        reason = (
            f"layer {model_layers[index]} has {stats.num_heads[index]} value heads in them and {model_heads[index]} in "
            f"the model (value heads per layer: {stats.num_heads} vs {model_heads})"
        )
    elif stats.rank_caps != model_caps:
        index = next(i for i, (a, b) in enumerate(zip(stats.rank_caps, model_caps)) if a != b)
        reason = (
            f"layer {model_layers[index]} has heads of rank cap {stats.rank_caps[index]} in them and "
            f"{model_caps[index]} in the model (different key/value head sizes)"
        )
    if reason is not None:
        raise StatsError(
            f"These rank statistics were made for another model: {reason}. Calibrate this model (or pass the "
            "statistics file made for it)."
        )


def plan_from_stats(model_or_adapter, stats: RankStats, config: RankPruneConfig) -> PrunePlan:
    """Choose the heads to remove under `config`'s score, direction and budget; returns the plan. For a rank score
    (joint, rank, norm, random); the importance scores are measured on the model (`RankPruner.plan()`, or
    `output_scores.importance_scores` then `plan_from_scores`)."""
    adapter = model_or_adapter if isinstance(model_or_adapter, LinearAttentionAdapter) else get_adapter(model_or_adapter)
    check_stats_match(stats, adapter)
    scores = head_scores(stats, config)
    return plan_from_scores(adapter, scores, config,
                            {"calibration_samples": stats.num_samples, "calibration_seq_len": stats.grid[-1]})  # fmt: skip


def _check_protected(layers, config: RankPruneConfig) -> None:
    unknown = sorted(set(config.protected_layers) - {layer.index for layer in layers})
    if unknown:
        raise PlanError(
            f"protected_layers {unknown} are not linear-attention layers; those are {[la.index for la in layers]}."
        )


DIRECTION_MEANINGS = {
    "saturated": "removes the highest scores",
    "low_rank": "removes the lowest scores",
    "random": "removes random heads (the scores are not used)",
}


def plan_from_scores(model_or_adapter, scores: list[np.ndarray], config: RankPruneConfig,
                     measured: dict[str, Any] | None = None) -> PrunePlan:  # fmt: skip
    """The plan removing heads by `scores` (per linear layer, one per value head) under `config`'s direction and
    budget. `measured`: what the scores rest on, recorded in the plan's settings (and so in the model card):
    `calibration_samples` / `calibration_seq_len` at the top level, anything else under `score_measured`."""
    adapter = model_or_adapter if isinstance(model_or_adapter, LinearAttentionAdapter) else get_adapter(model_or_adapter)
    layers = adapter.linear_layers()
    _check_protected(layers, config)
    if len(scores) != len(layers) or any(len(s) != layer.num_value_heads for s, layer in zip(scores, layers)):
        raise PlanError(
            f"scores have {[len(s) for s in scores]} values per layer; the model's linear layers have "
            f"{[layer.num_value_heads for layer in layers]} value heads."
        )
    direction = config.removal_direction()
    if config.score in IMPORTANCE_SCORES and direction == "saturated":
        warnings.warn(
            f"direction='saturated' removes the HIGHEST {config.score} scores, i.e. the MOST important heads; the "
            "least important go with direction='low_rank' (the default for importance scores, direction=None).",
            UserWarning,
            stacklevel=2,
        )
    priorities = _removal_priorities(scores, config)
    state_bytes = head_state_bytes(layers)  # fp32 state per head and sequence
    if config.budget == "uniform":
        removed = _allocate_uniform(layers, priorities, state_bytes, config)
    elif config.granularity == "group":
        removed = _allocate_groups(layers, [adapter.value_to_key(layer) for layer in layers], priorities, state_bytes,
                                   config)  # fmt: skip
    else:
        removed = _allocate(layers, priorities, state_bytes, config)
    kept = {
        layer.index: [h for h in range(layer.num_value_heads) if h not in removed[position]]
        for position, layer in enumerate(layers)
    }
    requested = _requested_heads(layers, state_bytes, config)
    settings = config.plan_settings()
    settings["direction"] = direction
    settings["direction_meaning"] = DIRECTION_MEANINGS[direction] + (
        " (high = important: the least important heads go)" if config.score in IMPORTANCE_SCORES
        and direction == "low_rank" else " (high = important: the MOST important heads go)"
        if config.score in IMPORTANCE_SCORES and direction == "saturated" else ""
    )  # fmt: skip
    measured = dict(measured or {})
    settings.update(
        removed_value_heads=sum(len(r) for r in removed),
        requested_value_heads=requested,
        total_value_heads=sum(layer.num_value_heads for layer in layers),
        calibration_samples=measured.pop("calibration_samples", None),
        calibration_seq_len=measured.pop("calibration_seq_len", None),
    )
    if measured:
        settings["score_measured"] = measured
    plan = PrunePlan.from_kept_heads(
        adapter,
        kept,
        scores={layer.index: [float(x) for x in scores[p]] for p, layer in enumerate(layers)},
        settings=settings,
    )
    return plan.to_stock_layout() if config.layout == "stock" else plan


def greedy_budget(model_or_adapter, config: RankPruneConfig):
    """What one-at-a-time (greedy) removal may do under `config`'s budget: an `output_scores.GreedyBudget` with
    per-layer caps (protected layers 0, min_heads_per_layer kept, per-layer quotas for a per_layer budget) and a
    `done(counts)` test (heads requested, or the byte target met). For a uniform budget it removes the uniform
    choice's head count with global caps; the uniform allocator then regroups by mean score (an approximation)."""
    from .output_scores import GreedyBudget

    adapter = model_or_adapter if isinstance(model_or_adapter, LinearAttentionAdapter) else get_adapter(model_or_adapter)
    layers = adapter.linear_layers()
    _check_protected(layers, config)
    state_bytes = head_state_bytes(layers)
    eligible = [p for p, layer in enumerate(layers) if layer.index not in config.protected_layers]
    caps = [0] * len(layers)
    for p in eligible:
        caps[p] = max(0, layers[p].num_value_heads - config.min_heads_per_layer)
    if config.budget == "uniform":
        total = _uniform_choice(layers, config).removed
        return GreedyBudget(caps, lambda counts: sum(counts) >= total, total)
    requested = _requested_heads(layers, state_bytes, config)
    if config.budget == "per_layer":
        if requested is None:
            requested = _heads_for_bytes_per_layer(layers, eligible, state_bytes, config)
        if config.layout == "stock":
            quotas = dict.fromkeys(eligible, requested // len(eligible)) if eligible else {}
        else:
            quotas = _proportional_quotas({p: layers[p].num_value_heads for p in eligible}, requested)
        for p, quota in quotas.items():
            caps[p] = min(caps[p], quota)
        total = sum(quotas.values())
        return GreedyBudget(caps, lambda counts: sum(counts) >= total, total)
    if requested is not None:
        return GreedyBudget(caps, lambda counts: sum(counts) >= requested, requested)
    before = sum(layer.num_value_heads * size for layer, size in zip(layers, state_bytes))

    def done(counts: list[int]) -> bool:
        return before - sum(c * size for c, size in zip(counts, state_bytes)) <= config.target_state_bytes

    # removals a byte target takes at most: the smallest heads first
    sizes = sorted(size for p in eligible for size in [state_bytes[p]] * caps[p])
    freed, heads = 0, 0
    while heads < len(sizes) and before - freed > config.target_state_bytes:
        freed += sizes[heads]
        heads += 1
    return GreedyBudget(caps, done, heads)


def _requested_heads(layers, state_bytes: list[int], config: RankPruneConfig) -> int | None:
    """Heads the budget asks to remove; None for a byte target (resolved while removing)."""
    total = sum(layer.num_value_heads for layer in layers)
    requested = config.heads_to_remove(total)
    if config.num_heads is not None and requested >= total:
        raise PlanError(f"num_heads={config.num_heads} would remove every one of the model's {total} value heads.")
    if requested is not None:
        return requested
    before = sum(layer.num_value_heads * size for layer, size in zip(layers, state_bytes))
    if config.target_state_bytes >= before:
        raise PlanError(
            f"target_state_bytes={config.target_state_bytes} is not below the model's linear state ({before} bytes "
            "per sequence): nothing would be removed."
        )
    return None


def _allocate(layers, priorities, state_bytes, config: RankPruneConfig) -> list[set[int]]:
    """Global (one ranking across layers) or per-layer (the same fraction in each layer) allocation."""
    requested = _requested_heads(layers, state_bytes, config)
    eligible = [p for p, layer in enumerate(layers) if layer.index not in config.protected_layers]
    capacity = {p: layers[p].num_value_heads - config.min_heads_per_layer for p in eligible}
    removed: list[set[int]] = [set() for _ in layers]
    if config.budget == "per_layer":
        if requested is None:
            requested = _heads_for_bytes_per_layer(layers, eligible, state_bytes, config)
        if config.layout == "stock":  # a stock config has one head count: the same removal in every layer
            quotas = dict.fromkeys(eligible, requested // len(eligible)) if eligible else {}
            if eligible and not requested // len(eligible):
                raise PlanError(
                    f"A stock layout removes the same number of heads in each of the {len(eligible)} linear layers: "
                    f"the budget ({requested} heads) is below one per layer. Ask for at least {len(eligible)}."
                )
        else:
            quotas = _proportional_quotas({p: layers[p].num_value_heads for p in eligible}, requested)
        for p, quota in quotas.items():
            if quota > capacity[p]:
                raise PlanError(
                    f"The per-layer budget removes {quota} of {layers[p].num_value_heads} heads in layer "
                    f"{layers[p].index}, leaving fewer than min_heads_per_layer={config.min_heads_per_layer}: "
                    "lower the budget or min_heads_per_layer."
                )
            order = np.argsort(-priorities[p], kind="stable")
            removed[p] = {int(h) for h in order[:quota]}
        return removed

    candidates = sorted(
        (_Head(p, h, float(priorities[p][h])) for p in eligible for h in range(layers[p].num_value_heads)),
        key=lambda head: (-head.priority, head.layer, head.head),
    )
    remaining = sum(layer.num_value_heads * size for layer, size in zip(layers, state_bytes))
    count = 0
    for head in candidates:
        done = count >= requested if requested is not None else remaining <= config.target_state_bytes
        if done:
            break
        if len(removed[head.layer]) >= capacity[head.layer]:
            continue
        removed[head.layer].add(head.head)
        remaining -= state_bytes[head.layer]
        count += 1
    fulfilled = count >= requested if requested is not None else remaining <= config.target_state_bytes
    if not fulfilled:
        raise PlanError(
            f"The budget cannot be met: only {count} heads can go while every unprotected linear layer keeps "
            f"min_heads_per_layer={config.min_heads_per_layer} heads and protected layers "
            f"{config.protected_layers} keep all theirs. Lower the budget or protect fewer layers."
        )
    return removed


def _allocate_groups(layers, maps, priorities, state_bytes, config: RankPruneConfig) -> list[set[int]]:
    """Whole key groups removed, by their value heads' mean priority: one ranking across layers (global budget) or
    each layer's proportional share (per_layer). A group is skipped when it would not bring the count removed closer
    to the one asked for (in all, or in its layer: the plan removes the nearest count the groups make, ties the
    fewer) or would leave its layer fewer than min_heads_per_layer."""
    requested = _requested_heads(layers, state_bytes, config)
    eligible = [p for p, layer in enumerate(layers) if layer.index not in config.protected_layers]
    members = {}
    for p in eligible:
        layer = layers[p]
        mapping = maps[p] or [h // (layer.num_value_heads // layer.num_key_heads) for h in range(layer.num_value_heads)]
        for key in sorted(set(mapping)):
            heads = np.array([h for h, k in enumerate(mapping) if k == key])
            members[(p, key)] = (heads, float(priorities[p][heads].mean()))
    if config.budget == "per_layer":
        if requested is None:
            requested = _heads_for_bytes_per_layer(layers, eligible, state_bytes, config)
        limits = _proportional_quotas({p: layers[p].num_value_heads for p in eligible}, requested)
    else:
        limits = None
    removed: list[set[int]] = [set() for _ in layers]
    remaining = sum(layer.num_value_heads * size for layer, size in zip(layers, state_bytes))
    count = 0
    for (p, _key), (heads, _priority) in sorted(members.items(), key=lambda item: (-item[1][1], item[0])):
        if requested is None and remaining <= config.target_state_bytes:
            break
        if limits is not None:
            further = abs(len(removed[p]) + len(heads) - limits[p]) >= abs(len(removed[p]) - limits[p])
        else:
            further = requested is not None and abs(count + len(heads) - requested) >= abs(count - requested)
        too_few = layers[p].num_value_heads - len(removed[p]) - len(heads) < config.min_heads_per_layer
        if further or too_few:
            continue
        removed[p].update(int(h) for h in heads)
        remaining -= len(heads) * state_bytes[p]
        count += len(heads)
    if count == 0 or (requested is None and remaining > config.target_state_bytes):
        raise PlanError(
            f"Whole key groups cannot meet this budget ({requested if requested is not None else 'the byte target'}"
            f" heads; groups of {sorted({len(h) for h, _ in members.values()})} value heads, every layer keeping "
            f"min_heads_per_layer={config.min_heads_per_layer}): raise the budget or use granularity='head'."
        )
    return removed


def _heads_for_bytes_per_layer(layers, eligible, state_bytes, config: RankPruneConfig) -> int:
    total = sum(layers[p].num_value_heads for p in eligible)
    before = sum(layer.num_value_heads * size for layer, size in zip(layers, state_bytes))
    for count in range(1, total + 1):
        quotas = _proportional_quotas({p: layers[p].num_value_heads for p in eligible}, count)
        if before - sum(quotas[p] * state_bytes[p] for p in eligible) <= config.target_state_bytes:
            return count
    return total


def _proportional_quotas(sizes: dict[int, int], total: int) -> dict[int, int]:
    """Split `total` over layers in proportion to their sizes (largest remainder), summing exactly to `total`."""
    whole = sum(sizes.values())
    exact = {p: total * size / whole for p, size in sizes.items()}
    quotas = {p: int(np.floor(value)) for p, value in exact.items()}
    for p in sorted(exact, key=lambda p: (-(exact[p] - quotas[p]), p))[: total - sum(quotas.values())]:
        quotas[p] += 1
    return quotas


class UniformRoundingWarning(UserWarning):
    """A uniform budget removes another head count than the one requested (the message says which and why)."""


@dataclass(frozen=True)
class UniformChoice:
    """What a uniform budget removes: every layer keeps `key_heads_kept` of its key heads (whole key groups go) and
    `value_heads_per_key` value heads in each kept group; `options` are all the achievable totals (ascending)."""

    total_heads: int
    requested: int | None  # value heads asked for; None for a byte target
    options: tuple[int, ...]
    removed: int
    key_heads_kept: int
    value_heads_per_key: int
    num_key_heads: int
    group_size: int
    num_layers: int
    reason: str

    @property
    def rounded(self) -> bool:
        return self.requested is not None and self.removed != self.requested

    def message(self) -> str:
        return (
            f"Uniform budget: removing {self.removed} of {self.total_heads} value heads "
            f"({self.removed / self.total_heads:.1%}): each of the {self.num_layers} linear layers keeps "
            f"{self.key_heads_kept} of its {self.num_key_heads} key heads with {self.value_heads_per_key} of "
            f"{self.group_size} value heads each. {self.reason}"
        )


def _uniform_geometry(layers, config: RankPruneConfig) -> tuple[int, int, int]:
    if config.protected_layers:
        raise PlanError(
            "A uniform budget removes the same heads count from every linear layer, so it cannot protect layers "
            f"{config.protected_layers}: use budget='global' or 'per_layer', or drop protected_layers."
        )
    shapes = {(layer.num_key_heads, layer.num_value_heads) for layer in layers}
    if len(shapes) != 1:
        raise PlanError(
            f"A uniform budget needs every linear layer to have the same head counts; this model has {sorted(shapes)}."
        )
    key_heads, value_heads = shapes.pop()
    return key_heads, value_heads, value_heads // key_heads


def uniform_choice(model_or_adapter, config: RankPruneConfig) -> UniformChoice:
    """The head count a uniform budget removes on this model, chosen among the achievable ones by
    `config.uniform_rounding` ("down": nearest at or below the request; "nearest"; "up"); a `PlanError` saying what
    is achievable when nothing fits. Needs only the model's geometry, so it runs before calibration."""
    adapter = model_or_adapter if isinstance(model_or_adapter, LinearAttentionAdapter) else get_adapter(model_or_adapter)
    return _uniform_choice(adapter.linear_layers(), config)


def _uniform_choice(layers, config: RankPruneConfig) -> UniformChoice:
    key_heads, value_heads, group = _uniform_geometry(layers, config)
    total = value_heads * len(layers)
    # (removed in all, key heads kept per layer, value heads kept per key head); ties keep more key heads
    shapes: dict[int, tuple[int, int]] = {}
    for keys_kept in range(key_heads, 0, -1):
        for per_key in range(group, 0 if config.granularity == "head" else group - 1, -1):
            kept = keys_kept * per_key
            if kept == value_heads or kept < config.min_heads_per_layer:
                continue
            shapes.setdefault((value_heads - kept) * len(layers), (keys_kept, per_key))
    options = tuple(sorted(shapes))
    shown = ", ".join(map(str, options))
    achievable = (
        f"A uniform plan removes the same heads from every layer (whole key groups of {group} value heads, or the "
        f"same number of value heads from every key group), so on this model it can remove {shown} of {total} "
        "value heads"
    )
    if not options:
        raise PlanError(
            f"A uniform budget cannot remove anything here while every layer keeps min_heads_per_layer="
            f"{config.min_heads_per_layer} heads. Use budget='global' or 'per_layer'."
        )
    state_bytes = head_state_bytes(layers)
    requested = _requested_heads(layers, state_bytes, config)
    if requested is None:  # a byte target: the smallest removal that meets it
        before = sum(layer.num_value_heads * size for layer, size in zip(layers, state_bytes))
        per_head = sum(state_bytes) / len(layers)
        fitting = [n for n in options if before - n * per_head <= config.target_state_bytes]
        if not fitting:
            raise PlanError(
                f"target_state_bytes={config.target_state_bytes} cannot be met uniformly: {achievable}, and removing "
                f"{options[-1]} leaves {int(before - options[-1] * per_head)} bytes. Use budget='global'."
            )
        removed = fitting[0]
        reason = f"{achievable}; {removed} is the fewest that fits target_state_bytes={config.target_state_bytes}."
    else:
        asked = (
            f"{requested} requested"
            + (f" (ratio {config.ratio} x {total} heads)" if config.budget_kind() == "ratio" else "")
        )
        rounding = config.uniform_rounding
        below = [n for n in options if n <= requested]
        above = [n for n in options if n >= requested]
        if rounding == "down" and not below:
            raise PlanError(
                f"{achievable}; {asked}, and none is at or below it. Ask for at least {options[0]} heads (ratio >= "
                f"{options[0] / total:.3g}), set uniform_rounding='up' (--uniform-rounding up) to remove "
                f"{options[0]}, or use budget='global' or 'per_layer' for exactly {requested}."
            )
        if rounding == "up" and not above:
            raise PlanError(f"{achievable}; {asked}, and none is at or above it. Ask for at most {options[-1]}.")
        if rounding == "down":
            removed = below[-1]
        elif rounding == "up":
            removed = above[0]
        else:
            removed = min(options, key=lambda n: (abs(n - requested), n))
        if removed == requested:
            reason = f"{achievable}; {requested} requested, achievable exactly."
        else:
            how = {"down": "the nearest at or below it", "up": "the nearest at or above it",
                   "nearest": "the nearest to it"}[rounding]  # fmt: skip
            reason = (
                f"{achievable}; {asked}, not achievable: taking {removed}, {how} (uniform_rounding={rounding!r}; "
                "budget='global' removes exactly the count asked for)."
            )
    keys_kept, per_key = shapes[removed]
    return UniformChoice(total, requested, options, removed, keys_kept, per_key, key_heads, group, len(layers), reason)


def _allocate_uniform(layers, priorities, state_bytes, config: RankPruneConfig) -> list[set[int]]:
    """The same heads count removed from every layer: the key groups with the highest mean removal priority go whole,
    and each kept group loses its highest-priority value heads, so every layer has the same stock configuration."""
    key_heads, _, group = _uniform_geometry(layers, config)
    choice = _uniform_choice(layers, config)
    removed = []
    for p in range(len(layers)):
        groups = [np.arange(key * group, (key + 1) * group) for key in range(key_heads)]  # stock consecutive grouping
        group_priority = np.array([priorities[p][members].mean() for members in groups])
        dropped_groups = np.argsort(-group_priority, kind="stable")[: key_heads - choice.key_heads_kept]
        chosen: set[int] = set()
        for key, members in enumerate(groups):
            if key in dropped_groups:
                chosen.update(int(h) for h in members)
                continue
            order = members[np.argsort(-priorities[p][members], kind="stable")]
            chosen.update(int(h) for h in order[: group - choice.value_heads_per_key])
        removed.append(chosen)
    return removed

