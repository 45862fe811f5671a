"""The pruning probe: the paper's Table 1 at any scale, with the random control the paper lacks.

For one head count k (default: the JRNP budget of the config), remove the k highest-rank heads, the k lowest-rank
heads, k random heads (several seeds) and the k heads JRNP chooses; evaluate each variant and say which group the
model can spare. Which group is redundant is a property of the model (PAPER.md, caveat), so a user measures it here
before trusting a direction.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arch import get_adapter
from .config import RankPruneConfig
from .scoring import plan_from_stats
from .stats import RankStats
from .surgery import apply_plan

PROBE_TASKS = ("passkey", "perplexity")


def probe_variants(config: RankPruneConfig, num_heads: int, seeds: Sequence[int]) -> dict[str, RankPruneConfig]:
    """The configs of every variant, all removing exactly `num_heads` heads under a global budget."""
    base = config.replace(num_heads=num_heads, ratio=None, target_state_bytes=None, budget="global")
    variants = {
        "high-rank heads removed": base.replace(score="rank", direction="saturated"),
        "low-rank heads removed": base.replace(score="rank", direction="low_rank"),
        "JRNP": base,
    }
    for seed in seeds:
        variants[f"random heads removed (seed {seed})"] = base.replace(direction="random", seed=seed)
    return variants


def probe_head_count(adapter, config: RankPruneConfig) -> int:
    """k: the number of heads the config's budget removes (the JRNP budget)."""
    total = sum(layer.num_value_heads for layer in adapter.linear_layers())
    if config.budget == "uniform":  # the count a uniform plan can actually remove
        from .scoring import uniform_choice

        return uniform_choice(adapter, config).removed
    if config.num_heads is not None:
        return config.num_heads
    if config.ratio is not None:
        return int(round(config.ratio * total))
    head_bytes = [layer.key_dim * layer.value_dim * 4 for layer in adapter.linear_layers()]
    before = sum(layer.num_value_heads * size for layer, size in zip(adapter.linear_layers(), head_bytes))
    return int(math.ceil((before - config.target_state_bytes) / max(head_bytes)))


def run_probe(
    model: torch.nn.Module,
    tokenizer: Any,
    stats: RankStats,
    config: RankPruneConfig | None = None,
    *,
    num_heads: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    model_factory: Callable[[], torch.nn.Module] | None = None,
    eval_kwargs: dict | None = None,
) -> dict[str, Any]:
    """Evaluate the original model and every variant on passkey accuracy and perplexity.

    `model_factory` builds a fresh copy of the original model for each variant (default: a deep copy of `model`;
    pass a loader for models too large to copy). Returns a JSON-ready dict with one row per variant and a verdict.
    """
    from .evaluation import evaluate_model

    config = config or RankPruneConfig()
    adapter = get_adapter(model)
    k = num_heads if num_heads is not None else probe_head_count(adapter, config)
    total = sum(layer.num_value_heads for layer in adapter.linear_layers())
    variants = probe_variants(config, k, seeds)
    eval_kwargs = dict(eval_kwargs or {})
    factory = model_factory or (lambda: copy.deepcopy(model))
    plans = {name: plan_from_stats(adapter, stats, variant) for name, variant in variants.items()}  # all checked first

    rows = {"original": {"removed_heads": 0, **evaluate_model(model, tokenizer, PROBE_TASKS, **eval_kwargs)}}
    for name, plan in plans.items():
        variant_model = factory()
        apply_plan(variant_model, plan)
        rows[name] = {"removed_heads": k, **evaluate_model(variant_model, tokenizer, PROBE_TASKS, **eval_kwargs)}
        rows[name]["removed"] = {str(layer.layer): layer.removed_value_heads for layer in plan.layers}
        del variant_model
    result = {"num_heads": k, "total_heads": total, "seeds": list(seeds), "rows": rows}
    result["random_mean"], result["random_std"] = _random_summary(rows)
    result["verdict"] = verdict(result)
    return result


def _random_summary(rows: dict[str, dict]) -> tuple[dict[str, float], dict[str, float]]:
    randoms = [row for name, row in rows.items() if name.startswith("random")]
    keys = ("passkey.accuracy", "perplexity.perplexity")
    mean = {key: float(np.mean([row[key] for row in randoms])) for key in keys}
    std = {key: float(np.std([row[key] for row in randoms])) for key in keys}
    return mean, std


def verdict(result: dict[str, Any]) -> str:
    """Which group the model can spare, judged on passkey accuracy (perplexity breaks ties), against the random
    control; and how JRNP itself fares."""
    rows, k = result["rows"], result["num_heads"]
    high, low, jrnp = rows["high-rank heads removed"], rows["low-rank heads removed"], rows["JRNP"]
    random_acc, random_std = result["random_mean"]["passkey.accuracy"], result["random_std"]["passkey.accuracy"]

    def cost(row):
        return (-row["passkey.accuracy"], row["perplexity.perplexity"])

    def described(row):
        return f"{row['passkey.accuracy']:.1%} passkey accuracy (perplexity {row['perplexity.perplexity']:.2f})"

    spare, other = ("high", low) if cost(high) <= cost(low) else ("low", high)
    spared = high if spare == "high" else low
    margin = max(random_std, 1e-9)
    if spared["passkey.accuracy"] > random_acc + margin:
        group = (
            f"This model can spare its {spare}-rank heads: without its {k} {spare}-rank heads it keeps "
            f"{described(spared)}, against {described(other)} when the other group goes and "
            f"{random_acc:.1%} ± {random_std:.1%} for random heads. "
            + ("The paper's direction (remove high-rank heads) holds here."
               if spare == "high" else "This is the opposite of the paper's direction: prefer direction='low_rank'.")
        )  # fmt: skip
    else:
        group = (
            f"Neither rank group alone can go at {k} heads: removing the high-rank heads gives {described(high)}, "
            f"the low-rank heads {described(low)}, random heads {random_acc:.1%} ± {random_std:.1%}."
        )
    joint = (
        f" JRNP (rank and norm jointly) keeps {described(jrnp)}"
        + (", better than random." if jrnp["passkey.accuracy"] > random_acc + margin else ", no better than random.")
    )
    return group + joint


def render_probe_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Pruning probe: {result['num_heads']} of {result['total_heads']} heads removed",
        "",
        "| variant | passkey accuracy | perplexity |",
        "|---|---|---|",
    ]
    for name, row in result["rows"].items():
        if name.startswith("random"):
            continue
        lines.append(f"| {name} | {row['passkey.accuracy']:.1%} | {row['perplexity.perplexity']:.2f} |")
    mean, std = result["random_mean"], result["random_std"]
    lines.append(
        f"| random heads removed ({len(result['seeds'])} seeds, mean ± std) | {mean['passkey.accuracy']:.1%} ± "
        f"{std['passkey.accuracy']:.1%} | {mean['perplexity.perplexity']:.2f} ± {std['perplexity.perplexity']:.2f} |"
    )
    lines += ["", result["verdict"], ""]
    return "\n".join(lines)


def write_probe(result: dict[str, Any], folder: str | os.PathLike) -> None:
    folder = Path(folder)
    (folder / "probe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (folder / "probe.md").write_text(render_probe_markdown(result), encoding="utf-8")
