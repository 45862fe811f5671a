"""The pruning probe: the paper's Table 1 at any scale, with the random control the paper lacks.

For one head count k (default: the JRNP budget of the config), remove the k highest-rank heads, the k lowest-rank
heads (by mean state rank, whatever the report's low/high split), k random heads (several seeds) and the k heads
JRNP chooses; evaluate each variant on passkey retrieval and perplexity, and say what removing each costs on both. Which group is redundant is a property of the model (PAPER.md, caveat), so a user measures it here
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
from .memory import head_state_bytes
from .scoring import plan_from_stats
from .stats import RankStats
from .surgery import apply_plan

PROBE_TASKS = ("passkey", "perplexity")
# The probe's groups are the k heads of highest / lowest mean state rank, not the report's low/high-rank split
HIGHEST, LOWEST = "highest-rank heads removed", "lowest-rank heads removed"


def probe_variants(config: RankPruneConfig, num_heads: int, seeds: Sequence[int]) -> dict[str, RankPruneConfig]:
    """The configs of every variant, all removing exactly `num_heads` heads under a global budget."""
    base = config.replace(num_heads=num_heads, budget="global")  # the budget: exactly num_heads
    variants = {
        HIGHEST: base.replace(score="rank", direction="saturated"),
        LOWEST: base.replace(score="rank", direction="low_rank"),
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
    requested = config.heads_to_remove(total)
    if requested is not None:
        return requested
    head_bytes = head_state_bytes(adapter.linear_layers())
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
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the original model and every variant on passkey accuracy and perplexity.

    `model_factory` builds a fresh copy of the original model for each variant (default: a deep copy of `model`;
    pass a loader for models too large to copy). Returns a JSON-ready dict with one row per variant and a verdict.
    `progress`: name each variant as it starts ("probe 2/7: ...") and show the evaluation's progress bars.
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

    if progress:
        eval_kwargs.setdefault("progress", True)
    steps = len(plans) + 1

    def say(step: int, name: str) -> None:
        if progress:
            print(f"      probe {step}/{steps}: {_row_label(name, k)}", flush=True)

    say(1, "original")
    rows = {"original": {"removed_heads": 0, **evaluate_model(model, tokenizer, PROBE_TASKS, **eval_kwargs)}}
    for step, (name, plan) in enumerate(plans.items(), start=2):
        say(step, name)
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


def _row_label(name: str, k: int) -> str:
    if name in (HIGHEST, LOWEST):
        return f"the {k} {name}"
    if name == "JRNP":
        return f"JRNP (the {k} heads of highest joint rank-norm score removed)"
    return name


def verdict(result: dict[str, Any]) -> str:
    """What removing each group costs on every metric measured (passkey accuracy and perplexity, against the
    original and the random control), which group is cheaper on each, and whether the metrics agree."""
    rows, k = result["rows"], result["num_heads"]
    original = rows["original"]
    high, low, jrnp = rows[HIGHEST], rows[LOWEST], rows["JRNP"]
    mean, std = result["random_mean"], result["random_std"]
    acc0, ppl0 = original["passkey.accuracy"], original["perplexity.perplexity"]

    def cost(row_acc: float, row_ppl: float) -> str:
        return (f"passkey {row_acc:.1%} ({100 * (row_acc - acc0):+.1f} points), perplexity {row_ppl:.2f} "
                f"({(row_ppl - ppl0) / ppl0:+.1%})")  # fmt: skip

    def against_random(row: dict) -> tuple[str, str]:
        acc_margin = max(std["passkey.accuracy"], 1e-9)
        ppl_margin = max(std["perplexity.perplexity"], 1e-9)
        acc, ppl = row["passkey.accuracy"], row["perplexity.perplexity"]
        on_acc = ("better than" if acc > mean["passkey.accuracy"] + acc_margin
                  else "worse than" if acc < mean["passkey.accuracy"] - acc_margin else "no different from")  # fmt: skip
        on_ppl = ("better than" if ppl < mean["perplexity.perplexity"] - ppl_margin
                  else "worse than" if ppl > mean["perplexity.perplexity"] + ppl_margin else "no different from")  # fmt: skip
        return on_acc, on_ppl

    costs = (
        f"Removing {k} of {result['total_heads']} heads (original: passkey {acc0:.1%}, perplexity {ppl0:.2f}) costs: "
        f"the {k} highest-rank heads {cost(high['passkey.accuracy'], high['perplexity.perplexity'])}; "
        f"the {k} lowest-rank heads {cost(low['passkey.accuracy'], low['perplexity.perplexity'])}; "
        f"{k} random heads ({len(result['seeds'])} seeds, mean) "
        f"{cost(mean['passkey.accuracy'], mean['perplexity.perplexity'])}; "
        f"JRNP {cost(jrnp['passkey.accuracy'], jrnp['perplexity.perplexity'])}."
    )
    cheaper_acc = "highest" if high["passkey.accuracy"] >= low["passkey.accuracy"] else "lowest"
    cheaper_ppl = "highest" if high["perplexity.perplexity"] <= low["perplexity.perplexity"] else "lowest"
    groups = {"highest": high, "lowest": low}
    acc_vs_random = against_random(groups[cheaper_acc])[0]
    ppl_vs_random = against_random(groups[cheaper_ppl])[1]
    if cheaper_acc == cheaper_ppl and acc_vs_random == "better than" and ppl_vs_random == "better than":
        group = (
            f"The {cheaper_acc}-rank heads are the cheaper group on both metrics, and cheaper than random heads: "
            + ("the paper's direction (remove high-rank heads) holds here."
               if cheaper_acc == "highest" else "the opposite of the paper's direction; prefer direction='low_rank'.")
        )  # fmt: skip
    elif cheaper_acc == cheaper_ppl:
        group = (
            f"The {cheaper_acc}-rank heads are the cheaper of the two rank groups on both metrics, but on passkey "
            f"{acc_vs_random} random heads and on perplexity {ppl_vs_random} random heads: rank alone does not "
            "pick heads that are safer to remove than random ones here."
        )
    else:
        group = (
            f"The metrics disagree: for passkey retrieval the {cheaper_acc}-rank heads are the cheaper group "
            f"({acc_vs_random} random), for perplexity the {cheaper_ppl}-rank heads ({ppl_vs_random} random). "
            "Which group this model can spare depends on the task: measure yours before choosing a direction."
        )
    jrnp_acc, jrnp_ppl = against_random(jrnp)
    joint = f" JRNP (rank and norm jointly) is {jrnp_acc} random on passkey and {jrnp_ppl} random on perplexity."
    return costs + " " + group + joint


def render_probe_markdown(result: dict[str, Any]) -> str:
    rows, k = result["rows"], result["num_heads"]
    original = rows["original"]
    acc0, ppl0 = original["passkey.accuracy"], original["perplexity.perplexity"]
    basis = []
    if "passkey.num_examples" in original:
        basis.append(f"passkey over {int(original['passkey.num_examples'])} examples")
    if "perplexity.num_tokens" in original:
        basis.append(f"perplexity over {int(original['perplexity.num_tokens']):,} held-out tokens")
    lines = [
        f"# Pruning probe: {k} of {result['total_heads']} heads removed",
        "",
        *([f"Each variant evaluated on {' and '.join(basis)}.", ""] if basis else []),
        "| variant | passkey accuracy | perplexity |",
        "|---|---|---|",
    ]
    for name, row in rows.items():
        if name.startswith("random"):
            continue
        acc, ppl = row["passkey.accuracy"], row["perplexity.perplexity"]
        if name == "original":
            lines.append(f"| original | {acc:.1%} | {ppl:.2f} |")
        else:
            lines.append(f"| {_row_label(name, k)} | {acc:.1%} ({100 * (acc - acc0):+.1f} pts) | {ppl:.2f} "
                         f"({(ppl - ppl0) / ppl0:+.1%}) |")  # fmt: skip
    mean, std = result["random_mean"], result["random_std"]
    lines.append(
        f"| {k} random heads removed ({len(result['seeds'])} seeds, mean ± std) | {mean['passkey.accuracy']:.1%} ± "
        f"{std['passkey.accuracy']:.1%} | {mean['perplexity.perplexity']:.2f} ± {std['perplexity.perplexity']:.2f} |"
    )
    lines += ["", result["verdict"], ""]
    return "\n".join(lines)


def write_probe(result: dict[str, Any], folder: str | os.PathLike) -> None:
    folder = Path(folder)
    (folder / "probe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (folder / "probe.md").write_text(render_probe_markdown(result), encoding="utf-8")
