"""From `RankStats` to a `PrunePlan`: head scores (Joint Rank-Norm and alternatives) and budget allocation.

Joint Rank-Norm (PAPER.md Eq. 14): score_h = alpha * rbar_h / d + (1 - alpha) * nbar_h / max_j nbar_j, where rbar and
nbar are the head's rank and norm aggregated over the calibration grid and samples. The paper removes the highest
scores (the most "saturated" heads); `direction` chooses the opposite or random heads instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arch import LinearAttentionAdapter, get_adapter
from .config import RankPruneConfig
from .plan import PlanError, PrunePlan
from .stats import NORM_METRIC_NAMES, RANK_METRIC_NAMES, RankStats, StatsError


def head_scores(stats: RankStats, config: RankPruneConfig) -> list[np.ndarray]:
    """Per linear layer, one score per value head (higher = more saturated)."""
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
    if config.direction == "saturated":
        return [np.asarray(s, dtype=float) for s in scores]
    if config.direction == "low_rank":
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
    """Choose the heads to remove under `config`'s score, direction and budget; returns the plan."""
    adapter = model_or_adapter if isinstance(model_or_adapter, LinearAttentionAdapter) else get_adapter(model_or_adapter)
    check_stats_match(stats, adapter)
    layers = adapter.linear_layers()
    unknown = sorted(set(config.protected_layers) - {layer.index for layer in layers})
    if unknown:
        raise PlanError(
            f"protected_layers {unknown} are not linear-attention layers; those are {[la.index for la in layers]}."
        )
    scores = head_scores(stats, config)
    priorities = _removal_priorities(scores, config)
    state_bytes = [layer.key_dim * layer.value_dim * 4 for layer in layers]  # fp32 state per head and sequence
    if config.budget == "uniform":
        removed = _allocate_uniform(layers, priorities, state_bytes, config)
    else:
        removed = _allocate(layers, priorities, state_bytes, config)
    kept = {
        layer.index: [h for h in range(layer.num_value_heads) if h not in removed[position]]
        for position, layer in enumerate(layers)
    }
    requested = _requested_heads(layers, state_bytes, config)
    settings = {
        key: getattr(config, key)
        for key in ("score", "alpha", "direction", "rank_metric", "norm", "rank_eps", "time_aggregation", "budget",
                    "ratio", "num_heads", "target_state_bytes", "min_heads_per_layer", "protected_layers", "seed")
    }  # fmt: skip
    settings.update(
        removed_value_heads=sum(len(r) for r in removed),
        requested_value_heads=requested,
        total_value_heads=sum(layer.num_value_heads for layer in layers),
        calibration_samples=stats.num_samples,
        calibration_seq_len=stats.grid[-1],
    )
    return PrunePlan.from_kept_heads(
        adapter,
        kept,
        scores={layer.index: [float(x) for x in scores[p]] for p, layer in enumerate(layers)},
        settings=settings,
    )


def _requested_heads(layers, state_bytes: list[int], config: RankPruneConfig) -> int | None:
    """Heads the budget asks to remove; None for a byte target (resolved while removing)."""
    total = sum(layer.num_value_heads for layer in layers)
    kind = config.budget_kind()
    if kind == "num_heads":
        if config.num_heads >= total:
            raise PlanError(f"num_heads={config.num_heads} would remove every one of the model's {total} value heads.")
        return config.num_heads
    if kind == "ratio":
        return int(round(config.ratio * total))
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


def _allocate_uniform(layers, priorities, state_bytes, config: RankPruneConfig) -> list[set[int]]:
    """The same number of value heads removed from every key group of every layer: a stock configuration."""
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
    group = value_heads // key_heads
    per_group_options = range(1, group)
    if not per_group_options:
        raise PlanError(
            "A uniform budget cannot remove anything here: each key head has a single value head, so removing one "
            "would empty its group. Use budget='global' or 'per_layer'."
        )
    requested = _requested_heads(layers, state_bytes, config)
    if requested is not None:
        per_group = min(per_group_options, key=lambda m: (abs(m * key_heads * len(layers) - requested), m))
    else:
        before = sum(layer.num_value_heads * size for layer, size in zip(layers, state_bytes))
        fitting = [m for m in per_group_options if before - m * key_heads * sum(state_bytes) <= config.target_state_bytes]
        if not fitting:
            raise PlanError(
                f"target_state_bytes={config.target_state_bytes} cannot be met uniformly: removing {group - 1} of "
                f"every {group} value heads per key group leaves "
                f"{before - (group - 1) * key_heads * sum(state_bytes)} bytes."
            )
        per_group = fitting[0]
    if value_heads - per_group * key_heads < config.min_heads_per_layer:
        raise PlanError(
            f"The uniform budget would keep {value_heads - per_group * key_heads} heads per layer, fewer than "
            f"min_heads_per_layer={config.min_heads_per_layer}."
        )
    removed = []
    for p in range(len(layers)):
        chosen: set[int] = set()
        for key in range(key_heads):
            members = np.arange(key * group, (key + 1) * group)  # stock consecutive grouping
            order = members[np.argsort(-priorities[p][members], kind="stable")]
            chosen.update(int(h) for h in order[:per_group])
        removed.append(chosen)
    return removed
