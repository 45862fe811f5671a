"""The pruning probe: the paper's Table 1 at any scale, with the random control the paper lacks, and every score.

For one head count k (default: the JRNP budget of the config), remove the k highest-rank heads, the k lowest-rank
heads (by mean state rank, whatever the report's low/high split), k random heads (several seeds), the k heads JRNP
chooses and, for each head-importance score asked for (kl, taylor, activation, decay; kl_greedy on request), its k
least important heads; evaluate each variant on passkey retrieval and perplexity, and say what removing each costs on
both, against the original and against the random control. With a `recover(model) -> model` callable (recovery
fine-tuning), every pruned variant is evaluated again after recovery. Which group is redundant is a property of the
model (PAPER.md, caveat), so a user measures it here before trusting a direction or a score.

The best score (`best_score`): among the scored rows (every row but the original and the random seeds), the one of
smallest cost = relative perplexity increase + passkey accuracy drop, both against the original
((ppl - ppl0) / ppl0 + (acc0 - acc), accuracy as a fraction: +100% perplexity weighs as much as losing every passkey);
costs equal to 1e-9 go to the lower perplexity, then to the earlier row.
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
from .config import DATA_SCORES, IMPORTANCE_SCORES, RankPruneConfig
from .errors import ConfigError, ImportanceScoreError
from .memory import head_state_bytes
from .scoring import plan_from_stats
from .stats import RankStats
from .surgery import apply_plan

PROBE_TASKS = ("passkey", "perplexity")
ACC, PPL = "passkey.accuracy", "perplexity.perplexity"
# The probe's groups are the k heads of highest / lowest mean state rank, not the report's low/high-rank split
HIGHEST, LOWEST = "highest-rank heads removed", "lowest-rank heads removed"
# importance-score rows, named by their score; kl_greedy costs about (k x heads) forwards per batch, so it is opt-in
PROBE_SCORES = ("kl", "kl_greedy", "taylor", "activation", "decay")
DEFAULT_PROBE_SCORES = IMPORTANCE_SCORES  # kl, taylor, activation, decay: one-shot
SCORE_DESCRIPTIONS = {
    "kl": "output-KL ablation",
    "kl_greedy": "output-KL, greedy",
    "taylor": "first-order Taylor",
    "activation": "output activation norm",
    "decay": "decay, data-free",
}
assert set(PROBE_SCORES) == set(IMPORTANCE_SCORES) | {"kl_greedy"}
BEST_RULE = ("cost = relative perplexity increase + passkey accuracy drop (a fraction), both against the original "
             "(+100% perplexity weighs as much as losing every passkey); the best score is the scored row (not the "
             "original, not random) of smallest cost, ties to the lower perplexity")  # fmt: skip


def check_probe_scores(scores: Sequence[str] | None) -> tuple[str, ...]:
    """The importance scores to probe, deduplicated in order; an unknown one raises `ConfigError` naming the valid."""
    scores = DEFAULT_PROBE_SCORES if scores is None else tuple(scores)
    unknown = [score for score in scores if score not in PROBE_SCORES]
    if unknown:
        raise ConfigError(f"unknown score(s) {unknown} for the probe; valid scores: {', '.join(PROBE_SCORES)}.")
    return tuple(dict.fromkeys(scores))


def probe_variants(config: RankPruneConfig, num_heads: int, seeds: Sequence[int]) -> dict[str, RankPruneConfig]:
    """The configs of the rank-statistics variants, all removing exactly `num_heads` heads under a global budget.
    JRNP is the config's own rank score (Joint Rank-Norm when the config names an importance score)."""
    base = config.replace(num_heads=num_heads, budget="global")  # the budget: exactly num_heads
    if not base.needs_rank_stats():
        base = base.replace(score="joint", direction=None)
    variants = {
        HIGHEST: base.replace(score="rank", direction="saturated"),
        LOWEST: base.replace(score="rank", direction="low_rank"),
        "JRNP": base,
    }
    for seed in seeds:
        variants[f"random heads removed (seed {seed})"] = base.replace(direction="random", seed=seed)
    return variants


def score_variants(config: RankPruneConfig, num_heads: int, scores: Sequence[str]) -> dict[str, RankPruneConfig]:
    """The config of each importance-score row: `config` (its calibration settings and defaults flow through) with
    that score in its natural direction (its least important heads go), removing exactly `num_heads` heads."""
    base = config.replace(num_heads=num_heads, budget="global")
    variants = {}
    for name in check_probe_scores(scores):
        score = "kl" if name == "kl_greedy" else name
        extra = {"kl_greedy": name == "kl_greedy"} if score == "kl" else {}
        variants[name] = base.replace(score=score, direction=None, **extra)
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
    scores: Sequence[str] | None = DEFAULT_PROBE_SCORES,
    samples: Any = None,
    recover: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    model_factory: Callable[[], torch.nn.Module] | None = None,
    eval_kwargs: dict | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the original model and every variant on passkey accuracy and perplexity.

    `scores`: the importance scores that get a row each (`PROBE_SCORES`; default kl, taylor, activation, decay; ()
    for none), each measured once on the original model under `config` with that score, removing its k least
    important heads. `samples`: their calibration samples (the ones the rank calibration used); None: loaded from
    `config.data` with `tokenizer` as calibration loads them. `recover`: optional `recover(model) -> model` (recovery
    fine-tuning), called once on every pruned variant after its zero-shot evaluation; the recovered model is
    evaluated too, under the row's "after_recovery". `model_factory` builds a fresh copy of the original model for
    each variant (default: a deep copy of `model`; pass a loader for models too large to copy). `progress`: name each
    step as it starts ("probe 2/12: ...") and show the evaluation's progress bars.

    Returns a JSON-ready dict: `rows` (one per variant: the metrics, `removed_heads`, `removed`, and for the scored
    rows `vs_random` and `cost`), `random_mean` / `random_std` over the seeds, `best_score` (the rule: `BEST_RULE`),
    `verdict`, `num_heads`, `total_heads`, `seeds`, `scores`; after recovery also `random_after_recovery` and
    `best_score_after_recovery`. Unknown scores, and a data score without samples or tokenizer, are refused before
    any work.
    """
    from .evaluation import evaluate_model
    from .pruner import RankPruner

    config = config or RankPruneConfig()
    scores = check_probe_scores(scores)
    adapter = get_adapter(model)
    k = num_heads if num_heads is not None else probe_head_count(adapter, config)
    total = sum(layer.num_value_heads for layer in adapter.linear_layers())
    rank_variants = probe_variants(config, k, seeds)
    importance_variants = score_variants(config, k, scores)
    if samples is None and any(cfg.score in DATA_SCORES for cfg in importance_variants.values()):
        needy = [name for name, cfg in importance_variants.items() if cfg.score in DATA_SCORES]
        if tokenizer is None:
            raise ImportanceScoreError(
                f"the probe's score(s) {needy} are measured on calibration samples: pass samples=, or a tokenizer "
                "to load config.data (decay alone is data-free)."
            )
        from .data import load_calibration_samples

        samples = load_calibration_samples(config.data, tokenizer, config.num_samples, config.seq_len, config.seed)
    elif samples is not None and not hasattr(samples, "input_ids"):  # a [N, L] tensor or lists of token ids
        from .calibrate import _as_samples
        from .data import CalibrationSamples

        samples = CalibrationSamples(*_as_samples(samples, None))
    eval_kwargs = dict(eval_kwargs or {})
    factory = model_factory or (lambda: copy.deepcopy(model))
    plans = {name: plan_from_stats(adapter, stats, cfg) for name, cfg in rank_variants.items()}  # all checked first

    if progress:
        eval_kwargs.setdefault("progress", True)
    steps = len(importance_variants) + 1 + len(plans) + len(importance_variants)
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        if progress:
            print(f"      probe {step}/{steps}: {text}", flush=True)

    measured = {}
    for name, variant in importance_variants.items():  # on the ORIGINAL model, before any pruning
        say(f"measuring the {name} score ({SCORE_DESCRIPTIONS[name]}) on the original model")
        pruner = RankPruner(model, tokenizer, variant)
        pruner.measure_importance(samples if variant.score in DATA_SCORES else None, progress=progress,
                                  verbose=progress)  # fmt: skip
        plans[name] = pruner.plan()
        measured[name] = plans[name].settings.get("score_measured")

    say("original")
    rows = {"original": {"removed_heads": 0, **evaluate_model(model, tokenizer, PROBE_TASKS, **eval_kwargs)}}
    for name, plan in plans.items():
        say(_row_label(name, k))
        variant_model = factory()
        apply_plan(variant_model, plan)
        rows[name] = {"removed_heads": k, **evaluate_model(variant_model, tokenizer, PROBE_TASKS, **eval_kwargs)}
        rows[name]["removed"] = {str(layer.layer): layer.removed_value_heads for layer in plan.layers}
        if measured.get(name):
            rows[name]["score_measured"] = measured[name]
        if recover is not None:
            if progress:
                print(f"      probe {step}/{steps}: recovering, then evaluating again", flush=True)
            recovered = recover(variant_model)
            recovered = variant_model if recovered is None else recovered
            rows[name]["after_recovery"] = evaluate_model(recovered, tokenizer, PROBE_TASKS, **eval_kwargs)
            del recovered
        del variant_model
    result = {"num_heads": k, "total_heads": total, "seeds": list(seeds), "scores": list(scores), "rows": rows}
    result["random_mean"], result["random_std"] = _random_summary(rows)
    if recover is not None:
        mean, std = _random_summary(rows, after_recovery=True)
        result["random_after_recovery"] = {"mean": mean, "std": std}
    _annotate(result)
    result["best_score"] = best_score(result)
    if recover is not None:
        result["best_score_after_recovery"] = best_score(result, after_recovery=True)
    result["verdict"] = verdict(result)
    return result


def _random_summary(rows: dict[str, dict], after_recovery: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    randoms = [row["after_recovery"] if after_recovery else row for name, row in rows.items() if _is_random(name)]
    mean = {key: float(np.mean([row[key] for row in randoms])) for key in (ACC, PPL)}
    std = {key: float(np.std([row[key] for row in randoms])) for key in (ACC, PPL)}
    return mean, std


def _is_random(name: str) -> bool:
    return name.startswith("random")


def scored_rows(result: dict[str, Any]) -> list[str]:
    """The rows a best score is chosen among: every variant but the original and the random seeds."""
    return [name for name in result["rows"] if name != "original" and not _is_random(name)]


def score_cost(row: dict[str, Any], original: dict[str, Any]) -> float:
    """Relative perplexity increase + passkey accuracy drop (a fraction), both against the original."""
    acc0, ppl0 = original[ACC], original[PPL]
    return (row[PPL] - ppl0) / ppl0 + (acc0 - row[ACC])


def best_score(result: dict[str, Any], after_recovery: bool = False) -> str | None:
    """The row name of the best score under `BEST_RULE` (zero-shot, or with `after_recovery` the recovered
    figures against the same original); None when no scored row has the figures."""
    rows = result["rows"]
    original = rows["original"]
    candidates = []
    for order, name in enumerate(scored_rows(result)):
        row = rows[name].get("after_recovery") if after_recovery else rows[name]
        if row is None or ACC not in row or PPL not in row:
            continue
        cost = score_cost(row, original)
        candidates.append((round(cost, 9) if math.isfinite(cost) else math.inf, row[PPL], order, name))
    return min(candidates)[3] if candidates else None


def against_random(row: dict, mean: dict[str, float], std: dict[str, float]) -> tuple[str, str]:
    """On passkey and on perplexity: "better than", "worse than" or "no different from" the random control, i.e.
    outside the seeds' mean ± std or not (any difference counts when the seeds agree exactly)."""
    acc_margin, ppl_margin = max(std[ACC], 1e-9), max(std[PPL], 1e-9)
    acc, ppl = row[ACC], row[PPL]
    on_acc = ("better than" if acc > mean[ACC] + acc_margin
              else "worse than" if acc < mean[ACC] - acc_margin else "no different from")  # fmt: skip
    on_ppl = ("better than" if ppl < mean[PPL] - ppl_margin
              else "worse than" if ppl > mean[PPL] + ppl_margin else "no different from")  # fmt: skip
    return on_acc, on_ppl


def _annotate(result: dict[str, Any]) -> None:
    """Each scored row's `vs_random` ("better" / "worse" / "no different" on passkey and perplexity) and `cost`,
    zero-shot and, where recovery ran, after recovery."""
    rows = result["rows"]
    for name in scored_rows(result):
        row = rows[name]
        on_acc, on_ppl = against_random(row, result["random_mean"], result["random_std"])
        row["vs_random"] = {"passkey": _short(on_acc), "perplexity": _short(on_ppl)}
        row["cost"] = score_cost(row, rows["original"])
        if "after_recovery" in row and "random_after_recovery" in result:
            control = result["random_after_recovery"]
            on_acc, on_ppl = against_random(row["after_recovery"], control["mean"], control["std"])
            row["after_recovery"]["vs_random"] = {"passkey": _short(on_acc), "perplexity": _short(on_ppl)}
            row["after_recovery"]["cost"] = score_cost(row["after_recovery"], rows["original"])


def _short(against: str) -> str:
    """ "better than" -> "better", "no different from" -> "no different"."""
    return against.removesuffix(" than").removesuffix(" from")


def _row_label(name: str, k: int) -> str:
    if name in (HIGHEST, LOWEST):
        return f"the {k} {name}"
    if name == "JRNP":
        return f"JRNP (the {k} heads of highest joint rank-norm score removed)"
    if name in SCORE_DESCRIPTIONS:
        return f"{name}: the {k} least important heads by {SCORE_DESCRIPTIONS[name]} removed"
    return name


def verdict(result: dict[str, Any]) -> str:
    """What removing each group costs on every metric measured (passkey accuracy and perplexity, against the
    original and the random control), which rank group is cheaper on each, whether the metrics agree, how each
    importance score compares with random, and the best score (`BEST_RULE`), before and after recovery."""
    rows, k = result["rows"], result["num_heads"]
    original = rows["original"]
    high, low, jrnp = rows[HIGHEST], rows[LOWEST], rows["JRNP"]
    mean, std = result["random_mean"], result["random_std"]
    acc0, ppl0 = original[ACC], original[PPL]

    def cost(row_acc: float, row_ppl: float) -> str:
        return (f"passkey {row_acc:.1%} ({100 * (row_acc - acc0):+.1f} points), perplexity {row_ppl:.2f} "
                f"({(row_ppl - ppl0) / ppl0:+.1%})")  # fmt: skip

    costs = (
        f"Removing {k} of {result['total_heads']} heads (original: passkey {acc0:.1%}, perplexity {ppl0:.2f}) costs: "
        f"the {k} highest-rank heads {cost(high[ACC], high[PPL])}; "
        f"the {k} lowest-rank heads {cost(low[ACC], low[PPL])}; "
        f"{k} random heads ({len(result['seeds'])} seeds, mean) {cost(mean[ACC], mean[PPL])}; "
        f"JRNP {cost(jrnp[ACC], jrnp[PPL])}."
    )
    cheaper_acc = "highest" if high[ACC] >= low[ACC] else "lowest"
    cheaper_ppl = "highest" if high[PPL] <= low[PPL] else "lowest"
    groups = {"highest": high, "lowest": low}
    acc_vs_random = against_random(groups[cheaper_acc], mean, std)[0]
    ppl_vs_random = against_random(groups[cheaper_ppl], mean, std)[1]
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
    jrnp_acc, jrnp_ppl = against_random(jrnp, mean, std)
    text = costs + " " + group
    text += f" JRNP (rank and norm jointly) is {jrnp_acc} random on passkey and {jrnp_ppl} random on perplexity."
    importance = [name for name in rows if name in SCORE_DESCRIPTIONS]
    if importance:
        parts = []
        for name in importance:
            on_acc, on_ppl = against_random(rows[name], mean, std)
            parts.append(f"{name} {cost(rows[name][ACC], rows[name][PPL])}, {on_acc} random on passkey and "
                         f"{on_ppl} random on perplexity")  # fmt: skip
        text += " Importance scores (their least important heads removed): " + "; ".join(parts) + "."
    best = result.get("best_score", best_score(result))
    if best is not None:
        text += (f" Best zero-shot score (smallest relative perplexity increase + passkey drop): {best} "
                 f"({cost(rows[best][ACC], rows[best][PPL])}).")  # fmt: skip
    if "random_after_recovery" in result:
        after = result.get("best_score_after_recovery", best_score(result, after_recovery=True))
        control = result["random_after_recovery"]["mean"]
        if after is not None:
            recovered = rows[after]["after_recovery"]
            text += (f" After recovery: random heads {cost(control[ACC], control[PPL])}; the best score is {after} "
                     f"({cost(recovered[ACC], recovered[PPL])}).")  # fmt: skip
    return text


def render_probe_markdown(result: dict[str, Any]) -> str:
    """The probe as one table, variants as rows: passkey accuracy and perplexity (with the change against the
    original), how each compares with the random control, its cost (`BEST_RULE`), and the same after recovery when
    recovery ran; then the rule, the best score and the verdict."""
    rows, k = result["rows"], result["num_heads"]
    original = rows["original"]
    acc0, ppl0 = original[ACC], original[PPL]
    recovered = "random_after_recovery" in result
    basis, acc_head, ppl_head = [], "passkey accuracy", "perplexity"
    if "passkey.num_examples" in original:
        examples = int(original["passkey.num_examples"])
        basis.append(f"passkey over {examples} examples")
        acc_head = f"passkey accuracy ({examples} examples)"
    if "perplexity.num_tokens" in original:
        tokens = int(original["perplexity.num_tokens"])
        basis.append(f"perplexity over {tokens:,} held-out tokens")
        ppl_head = f"perplexity ({tokens:,} tokens)"
    header = ["variant", acc_head, ppl_head, "vs random (passkey / perplexity)", "cost"]
    if recovered:
        header += ["after recovery: passkey", "perplexity", "vs random", "cost"]
    lines = [
        f"# Pruning probe: {k} of {result['total_heads']} heads removed",
        "",
        *([f"Each variant evaluated on {' and '.join(basis)}.", ""] if basis else []),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]

    def figures(row: dict, mean: dict, std: dict, best: bool) -> list[str]:
        acc, ppl = row[ACC], row[PPL]
        on_acc, on_ppl = against_random(row, mean, std)
        return [f"{acc:.1%} ({100 * (acc - acc0):+.1f} pts)", f"{ppl:.2f} ({(ppl - ppl0) / ppl0:+.1%})",
                f"{_short(on_acc)} / {_short(on_ppl)}",
                f"{score_cost(row, original):+.2f}" + (" (best)" if best else "")]  # fmt: skip

    def spread(mean: dict, std: dict) -> list[str]:
        return [f"{mean[ACC]:.1%} ± {std[ACC]:.1%}", f"{mean[PPL]:.2f} ± {std[PPL]:.2f}", "",
                f"{score_cost(mean, original):+.2f}"]  # fmt: skip

    mean, std = result["random_mean"], result["random_std"]
    best = result.get("best_score", best_score(result))
    best_after = result.get("best_score_after_recovery") if recovered else None
    for name, row in rows.items():
        if _is_random(name):
            continue
        if name == "original":
            cells = ["original", f"{acc0:.1%}", f"{ppl0:.2f}", "", ""] + (["", "", "", ""] if recovered else [])
        else:
            cells = [_row_label(name, k), *figures(row, mean, std, name == best)]
            if recovered:
                control = result["random_after_recovery"]
                after = row.get("after_recovery")
                cells += figures(after, control["mean"], control["std"], name == best_after) if after else [""] * 4
        lines.append("| " + " | ".join(cells) + " |")
    cells = [f"{k} random heads removed ({len(result['seeds'])} seeds, mean ± std)", *spread(mean, std)]
    if recovered:
        cells += spread(result["random_after_recovery"]["mean"], result["random_after_recovery"]["std"])
    lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{BEST_RULE[0].upper()}{BEST_RULE[1:]}. Best zero-shot score: {best if best is not None else 'none'}"
              + (f"; after recovery: {best_after}" if recovered else "") + "."]  # fmt: skip
    lines += ["", result["verdict"], ""]
    return "\n".join(lines)


def write_probe(result: dict[str, Any], folder: str | os.PathLike) -> None:
    folder = Path(folder)
    (folder / "probe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (folder / "probe.md").write_text(render_probe_markdown(result), encoding="utf-8")
