import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hf_rankprune.report import analyze, average_ranks, bimodality, largest_gap_split, spearman, write_report
from hf_rankprune.stats import METRICS, CategoryAccumulator, RankStats


def synthetic_stats(low_heads, categories=("math", "technical"), flip_in=None):
    """Two layers of 6 heads, d=16: heads in `low_heads` (layer, head) sit at rank ~2, others saturate at ~15."""
    grid = [64, 128, 192, 256]
    stats = RankStats(layers=[0, 2], num_heads=[6, 6], rank_caps=[16, 16], grid=grid, settings={"rank_eps": 1e-4})
    for category in categories:
        accumulator = CategoryAccumulator.empty([6, 6], len(grid))
        accumulator.counts[:] = 3
        for layer in range(2):
            for head in range(6):
                low = (layer, head) in low_heads
                if flip_in == category and (layer, head) == (0, 0):
                    low = not low
                rank = (2.0 + 0.1 * head) if low else (14.0 + 0.15 * head)
                for metric in METRICS:
                    value = rank if metric.endswith("_rank") else rank * 1.5
                    accumulator.sums[metric][layer][head, :] = 3 * value
                    accumulator.squares[metric][layer][head, :] = 3 * value**2
        stats.categories[category] = accumulator
    return stats


def test_rank_helpers_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    np.testing.assert_allclose(average_ranks(a), scipy_stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_split_and_bimodality():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 20), rng.normal(0.85, 0.05, 30)])
    assert 0.25 < largest_gap_split(values) < 0.65
    two_modes = bimodality(values, largest_gap_split(values))
    n, g, k = len(values), scipy_stats.skew(values, bias=False), scipy_stats.kurtosis(values, bias=False)
    assert two_modes["coefficient"] == pytest.approx((g * g + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))
    assert two_modes["coefficient"] > 5 / 9 and two_modes["separation"] > 0.9
    uniform = np.linspace(0, 1, 50)
    assert bimodality(uniform, largest_gap_split(uniform))["coefficient"] < 5 / 9


def test_analysis_finds_the_groups_and_stability():
    low = {(0, 1), (0, 4), (1, 0), (1, 2), (1, 5)}
    analysis = analyze(synthetic_stats(low))
    strat = analysis["stratification"]
    assert (strat["low_heads"], strat["high_heads"]) == (5, 7)
    assert [(row["low"], row["high"]) for row in strat["per_layer"]] == [(2, 4), (3, 3)]
    assert analysis["head_labels"]["0"][1] == "low" and analysis["head_labels"]["0"][0] == "high"
    assert analysis["stability"]["spearman_rank_early_vs_late"] == pytest.approx(1.0)
    assert analysis["stability"]["min_pairwise_label_agreement_across_categories"] == 1.0
    # one head that changes group in one category lowers agreement by exactly 1/12
    flipped = analyze(synthetic_stats(low, categories=("math", "technical", "long_context"), flip_in="math"))
    assert flipped["categories"]["math"]["label_agreement_with_all"] == pytest.approx(11 / 12)
    assert flipped["stability"]["min_pairwise_label_agreement_across_categories"] == pytest.approx(11 / 12)


def test_write_report_files(tmp_path):
    stats = synthetic_stats({(0, 0), (1, 1)})
    write_report(stats, tmp_path)
    assert RankStats.from_json_file(tmp_path / "rank_stats.json").to_dict() == stats.to_dict()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stratification"]["low_heads"] == 2
    markdown = (tmp_path / "report.md").read_text()
    assert "| 0 | 6 | 1 | 5 |" in markdown and "![rank_trajectories.png](figures/rank_trajectories.png)" in markdown
    for name in ("rank_trajectories.png", "rank_heatmap.png", "rank_histogram.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
