"""Analysis of `RankStats`: the paper's stratification and stability statistics, figures, and a written report.

Everything here is derived from RankStats alone, so a report can be rebuilt from a saved `rank_stats.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .stats import RankStats

EARLY_TOKEN = 128  # the paper compares per-head ranks at t=128 with t=2048


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; nan when either vector is constant."""
    return pearson(average_ranks(np.asarray(a, float)), average_ranks(np.asarray(b, float)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(np.dot(a, b) / denominator) if denominator > 0 else float("nan")


def largest_gap_split(values: np.ndarray) -> float:
    """Threshold in the widest gap of the sorted values: heads below it are the low group, above it the high one."""
    ordered = np.sort(values)
    if len(ordered) < 2 or ordered[0] == ordered[-1]:
        return float(ordered[-1]) if len(ordered) else 0.0
    gaps = np.diff(ordered)
    widest = int(np.argmax(gaps))
    return float((ordered[widest] + ordered[widest + 1]) / 2)


def bimodality(values: np.ndarray, threshold: float) -> dict[str, float]:
    """How two-group the distribution is.

    - coefficient: Sarle's bimodality coefficient (skew^2 + 1) / (excess kurtosis + 3 (n-1)^2 / ((n-2)(n-3)));
      above 5/9 ~ 0.556 suggests a bimodal distribution.
    - separation: share of the variance explained by the low/high split (Otsu's criterion, 1 = two points).
    """
    n = len(values)
    centred = values - values.mean()
    variance = (centred**2).mean()
    if n < 4 or variance == 0:
        return {"coefficient": float("nan"), "separation": float("nan")}
    skew = (centred**3).mean() / variance**1.5 * np.sqrt(n * (n - 1)) / (n - 2)
    kurtosis = (centred**4).mean() / variance**2 - 3
    kurtosis = ((n + 1) * kurtosis + 6) * (n - 1) / ((n - 2) * (n - 3))
    coefficient = (skew**2 + 1) / (kurtosis + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    low, high = values[values < threshold], values[values >= threshold]
    between = (len(low) * (low.mean() - values.mean()) ** 2 + len(high) * (high.mean() - values.mean()) ** 2) / n
    return {"coefficient": float(coefficient), "separation": float(between / variance) if len(low) else 0.0}


def decay_rank_correlation(stats: RankStats, decay: list[np.ndarray]) -> dict[str, Any]:
    """How well the data-free decay score (`output_scores.decay_scores`: log of a head's memory length from A_log /
    dt_bias) orders the heads by calibrated mean rank: Spearman's rho over all heads, and per layer."""
    if [len(d) for d in decay] != list(stats.num_heads):
        raise ValueError(
            f"decay scores have {[len(d) for d in decay]} heads per layer, the statistics {stats.num_heads}."
        )
    ranks = stats.head_means("threshold_rank")
    per_layer = {str(layer): spearman(np.asarray(d, float), r) for layer, d, r in zip(stats.layers, decay, ranks)}
    return {
        "score": "decay: -log(1 - exp(g)), g = -exp(A_log) * softplus(dt_bias)",
        "heads": int(sum(stats.num_heads)),
        "spearman_with_mean_rank": spearman(np.concatenate(decay).astype(float), np.concatenate(ranks)),
        "spearman_with_mean_rank_per_layer": per_layer,
    }


def analyze(stats: RankStats, decay: list[np.ndarray] | None = None) -> dict[str, Any]:
    """The paper's statistics as one JSON-ready dictionary (see report.md for what each means); with `decay` (per
    linear layer, the decay score of each head), also its Spearman correlation with the calibrated rank."""
    caps = np.asarray(stats.rank_caps, dtype=float)
    head_rank = stats.head_means("threshold_rank")
    normalised = np.concatenate([ranks / cap for ranks, cap in zip(head_rank, caps)])
    threshold = largest_gap_split(normalised)
    labels = normalised >= threshold
    offsets = np.cumsum([0, *stats.num_heads])

    per_layer = []
    for position, layer in enumerate(stats.layers):
        layer_labels = labels[offsets[position] : offsets[position + 1]]
        per_layer.append(
            {
                "layer": layer,
                "heads": stats.num_heads[position],
                "low": int((~layer_labels).sum()),
                "high": int(layer_labels.sum()),
                "mean_rank": float(head_rank[position].mean()),
                "rank_cap": stats.rank_caps[position],
            }
        )

    early = stats.grid_index(EARLY_TOKEN)
    final = len(stats.grid) - 1
    rank_traj = np.concatenate(stats.trajectory("threshold_rank"))
    norm_traj = np.concatenate(stats.trajectory("nuclear_norm"))
    stability: dict[str, Any] = {
        "early_token": stats.grid[early],
        "late_token": stats.grid[final],
        "spearman_rank_early_vs_late": spearman(rank_traj[:, early], rank_traj[:, final]),
        "min_cosine_rank_vs_final": float(min(cosine(rank_traj[:, g], rank_traj[:, final]) for g in range(final + 1))),
        "min_cosine_norm_vs_final": float(min(cosine(norm_traj[:, g], norm_traj[:, final]) for g in range(final + 1))),
    }

    by_category = {}
    for category in stats.category_names:
        ranks = np.concatenate(
            [r / cap for r, cap in zip(stats.head_means("threshold_rank", category), caps)]
        )
        by_category[category] = {
            "samples": int(stats.categories[category].counts[-1]),
            "mean_normalised_rank": float(ranks.mean()),
            "label_agreement_with_all": float(((ranks >= threshold) == labels).mean()),
            "spearman_with_all": spearman(ranks, normalised),
        }
    names = stats.category_names
    pairwise = [
        float(
            (
                (np.concatenate([r / c for r, c in zip(stats.head_means("threshold_rank", a), caps)]) >= threshold)
                == (np.concatenate([r / c for r, c in zip(stats.head_means("threshold_rank", b), caps)]) >= threshold)
            ).mean()
        )
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    stability["min_pairwise_label_agreement_across_categories"] = min(pairwise) if pairwise else None

    result = {
        "model": stats.settings.get("model_name"),
        "model_type": stats.settings.get("model_type"),
        "num_samples": stats.num_samples,
        "seq_len": stats.grid[-1],
        "grid": stats.grid,
        "rank_eps": stats.settings.get("rank_eps"),
        "stratification": {
            "split_normalised_rank": threshold,
            "low_heads": int((~labels).sum()),
            "high_heads": int(labels.sum()),
            "total_heads": int(len(labels)),
            "low_group_mean_normalised_rank": float(normalised[~labels].mean()) if (~labels).any() else None,
            "high_group_mean_normalised_rank": float(normalised[labels].mean()) if labels.any() else None,
            "bimodality": bimodality(normalised, threshold),
            "per_layer": per_layer,
        },
        "stability": stability,
        "categories": by_category,
        "head_labels": {
            str(layer): ["high" if label else "low" for label in labels[offsets[p] : offsets[p + 1]]]
            for p, layer in enumerate(stats.layers)
        },
    }
    if decay is not None:
        result["decay"] = decay_rank_correlation(stats, decay)
    return result


def plot_figures(stats: RankStats, analysis: dict[str, Any], folder: str | os.PathLike) -> list[str]:
    """Write the figures (PNG) into `folder`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.asarray(stats.grid)
    trajectories = stats.trajectory("threshold_rank")
    labels = analysis["head_labels"]
    files = []

    # Fig. 1 of the paper: every head's rank trajectory per layer, with the min(t, d) bound dashed.
    count = len(stats.layers)
    columns = min(4, count)
    rows = int(np.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False, sharex=True)
    for position, layer in enumerate(stats.layers):
        axis = axes[position // columns][position % columns]
        cap = stats.rank_caps[position]
        t = np.unique(np.concatenate([[0], grid, [min(cap, grid[-1])]]))  # the bound's knee at t = d, drawn exactly
        axis.plot(t, np.minimum(t, cap), "k--", linewidth=1, label="min(t, d)")
        for head, trajectory in enumerate(trajectories[position]):
            colour = "tab:red" if labels[str(layer)][head] == "high" else "tab:blue"
            axis.plot(grid, trajectory, color=colour, linewidth=0.9, alpha=0.8)
        axis.set_title(f"layer {layer}", fontsize=9)
        axis.set_ylim(-0.5, stats.rank_caps[position] * 1.08)
        axis.tick_params(labelsize=7)
    for extra in range(count, rows * columns):
        axes[extra // columns][extra % columns].axis("off")
    figure.supxlabel("tokens seen", y=0.09 if rows == 1 else 0.05)
    figure.supylabel(f"effective rank (eps={stats.settings.get('rank_eps')})")
    figure.legend(
        handles=[
            plt.Line2D([], [], color="tab:red", label="high-rank heads"),
            plt.Line2D([], [], color="tab:blue", label="low-rank heads"),
            plt.Line2D([], [], color="k", linestyle="--", label="bound min(t, d)"),
        ],
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    figure.suptitle("State rank trajectories per head")
    figure.tight_layout(rect=(0.02, 0.14 if rows == 1 else 0.08, 1, 1))
    figure.savefig(folder / "rank_trajectories.png", dpi=120)
    plt.close(figure)
    files.append("rank_trajectories.png")

    # Heatmap: layers x heads, mean rank over time, normalised by the cap.
    width = max(stats.num_heads)
    matrix = np.full((count, width), np.nan)
    for position, means in enumerate(stats.head_means("threshold_rank")):
        matrix[position, : len(means)] = means / stats.rank_caps[position]
    figure, axis = plt.subplots(figsize=(max(4.0, 0.35 * width + 2), max(2.5, 0.3 * count + 1.5)))
    image = axis.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axis.set_yticks(range(count), [str(layer) for layer in stats.layers], fontsize=7)
    axis.set_xlabel("value head")
    axis.set_ylabel("layer")
    axis.set_title("Mean effective rank / d")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(folder / "rank_heatmap.png", dpi=120)
    plt.close(figure)
    files.append("rank_heatmap.png")

    # Histogram of per-head mean rank with the stratification split.
    values = np.concatenate([m / cap for m, cap in zip(stats.head_means("threshold_rank"), stats.rank_caps)])
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.hist(values, bins=min(40, max(10, len(values) // 4)), range=(0, 1), color="tab:gray")
    axis.axvline(analysis["stratification"]["split_normalised_rank"], color="tab:red", linestyle="--", label="split")
    axis.set_xlabel("mean effective rank / d")
    axis.set_ylabel("heads")
    axis.set_title("Distribution of head ranks")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "rank_histogram.png", dpi=120)
    plt.close(figure)
    files.append("rank_histogram.png")
    return files


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(analysis: dict[str, Any], figures: list[str]) -> str:
    strat, stab = analysis["stratification"], analysis["stability"]
    lines = [
        f"# State-rank analysis: {analysis['model'] or analysis['model_type']}",
        "",
        f"{analysis['num_samples']} calibration samples of {analysis['seq_len']} tokens; states observed at "
        f"{len(analysis['grid'])} grid points; effective rank = #{{sigma_i > eps sigma_1}} with eps = "
        f"{analysis['rank_eps']}.",
        "",
        "## Stratification",
        "",
        f"Heads split at mean rank / d = {_fmt(strat['split_normalised_rank'])} (the widest gap of the distribution): "
        f"**{strat['low_heads']} low-rank** (mean {_fmt(strat['low_group_mean_normalised_rank'])}) and "
        f"**{strat['high_heads']} high-rank** (mean {_fmt(strat['high_group_mean_normalised_rank'])}) of "
        f"{strat['total_heads']}. Bimodality coefficient {_fmt(strat['bimodality']['coefficient'])} "
        f"(> 0.556 suggests two modes); the split explains {_fmt(strat['bimodality']['separation'])} of the variance.",
        "",
        "| layer | heads | low | high | mean rank | d |",
        "|---|---|---|---|---|---|",
        *[
            f"| {row['layer']} | {row['heads']} | {row['low']} | {row['high']} | {row['mean_rank']:.2f} | "
            f"{row['rank_cap']} |"
            for row in strat["per_layer"]
        ],
        "",
        "## Stability",
        "",
        "| statistic | value | paper |",
        "|---|---|---|",
        f"| Spearman rho, per-head rank at t={stab['early_token']} vs t={stab['late_token']} | "
        f"{_fmt(stab['spearman_rank_early_vs_late'])} | > 0.90 |",
        f"| min cosine of rank vectors over time vs final | {_fmt(stab['min_cosine_rank_vs_final'])} | > 0.97 |",
        f"| min cosine of norm vectors over time vs final | {_fmt(stab['min_cosine_norm_vs_final'])} | > 0.98 |",
        f"| min label agreement between context categories | "
        f"{_fmt(stab['min_pairwise_label_agreement_across_categories'])} | stable |",
        "",
        "## Context categories",
        "",
        "| category | samples | mean rank / d | label agreement with all | Spearman with all |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {row['samples']} | {_fmt(row['mean_normalised_rank'])} | "
            f"{_fmt(row['label_agreement_with_all'])} | {_fmt(row['spearman_with_all'])} |"
            for name, row in analysis["categories"].items()
        ],
        "",
    ]
    decay = analysis.get("decay")
    if decay is not None:
        lines += [
            "## Decay and rank",
            "",
            f"The data-free decay score ({decay['score']}: the log of a head's memory length, with the gate input at "
            f"0) against the calibrated mean rank of the same {decay['heads']} heads: Spearman rho = "
            f"{_fmt(decay['spearman_with_mean_rank'])} (per layer: "
            + ", ".join(f"{layer}: {_fmt(rho)}" for layer, rho in decay["spearman_with_mean_rank_per_layer"].items())
            + "). Near 1: slow-forgetting heads are the high-rank ones, and decay orders heads without calibration.",
            "",
        ]
    lines += [
        "## Figures",
        "",
        *[f"![{name}](figures/{name})" for name in figures],
        "",
    ]
    return "\n".join(lines)


def write_report(stats: RankStats, folder: str | os.PathLike, decay: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Write rank_stats.json, report.json, report.md and figures/*.png into `folder`; returns the analysis. `decay`:
    the model's per-head decay scores (`output_scores.decay_scores`), correlated with the rank in the report."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    analysis = analyze(stats, decay)
    figures = plot_figures(stats, analysis, folder / "figures")
    stats.to_json_file(folder / "rank_stats.json")
    (folder / "report.json").write_text(json.dumps(analysis, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(analysis, figures), encoding="utf-8")
    return analysis
