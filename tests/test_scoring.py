import numpy as np
import pytest
import torch
from conftest import build_tiny_model
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

from hf_rankprune.arch import get_adapter
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.plan import PlanError
from hf_rankprune.scoring import head_scores, plan_from_stats
from hf_rankprune.stats import METRICS, CategoryAccumulator, RankStats, StatsError


def stats_for(model, ranks, norms):
    """RankStats for `model` whose every grid point holds the given per-layer head ranks and nuclear norms."""
    layers = get_adapter(model).linear_layers()
    grid = [64, 128]
    stats = RankStats([la.index for la in layers], [la.num_value_heads for la in layers],
                      [la.rank_cap for la in layers], grid, settings={"rank_eps": 1e-4})  # fmt: skip
    accumulator = CategoryAccumulator.empty(stats.num_heads, len(grid))
    accumulator.counts[:] = 2
    for p in range(len(layers)):
        for metric in METRICS:
            values = {"threshold_rank": ranks[p], "nuclear_norm": norms[p]}.get(metric, ranks[p])
            accumulator.sums[metric][p][:] = 2 * np.asarray(values, dtype=float)[:, None]
    stats.categories["default"] = accumulator
    return stats


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("qwen3_next")  # linear layers 0, 1, 3; 2 key heads x 8 value heads; d = 16


@pytest.fixture(scope="module")
def stats(model):
    rng = np.random.default_rng(0)
    ranks = [rng.integers(1, 17, 8).astype(float) for _ in range(3)]
    norms = [rng.uniform(0.5, 5.0, 8) for _ in range(3)]
    return stats_for(model, ranks, norms)


def test_joint_rank_norm_score_is_eq_14(stats):
    ranks = stats.head_means("threshold_rank")
    norms = stats.head_means("nuclear_norm")
    largest = max(n.max() for n in norms)
    for alpha in (0.0, 0.3, 1.0):
        scores = head_scores(stats, RankPruneConfig(alpha=alpha))
        for s, r, n in zip(scores, ranks, norms):
            np.testing.assert_allclose(s, alpha * r / 16 + (1 - alpha) * n / largest)
    np.testing.assert_allclose(head_scores(stats, RankPruneConfig(score="rank"))[1], ranks[1] / 16)
    np.testing.assert_allclose(head_scores(stats, RankPruneConfig(score="norm"))[2], norms[2] / largest)
    first, again = (head_scores(stats, RankPruneConfig(score="random", seed=4)) for _ in range(2))
    assert all((a == b).all() for a, b in zip(first, again))


def removed_of(plan):
    return {la.layer: sorted(set(range(la.num_value_heads)) - set(la.kept_value_heads)) for la in plan.layers}


def test_directions_remove_the_right_heads(model, stats):
    scores = np.concatenate(head_scores(stats, RankPruneConfig()))
    order = np.argsort(-scores, kind="stable")
    layer_of = [0] * 8 + [1] * 8 + [3] * 8
    for direction, chosen in (("saturated", order[:9]), ("low_rank", order[::-1][:9])):
        plan = plan_from_stats(model, stats, RankPruneConfig(direction=direction))
        expected = {layer: sorted(int(i) % 8 for i in chosen if layer_of[i] == layer) for layer in (0, 1, 3)}
        assert removed_of(plan) == expected
        assert plan.settings["removed_value_heads"] == 9 == round(0.389 * 24)
    random_plans = [removed_of(plan_from_stats(model, stats, RankPruneConfig(direction="random", seed=s)))
                    for s in (0, 0, 1)]  # fmt: skip
    assert random_plans[0] == random_plans[1] != random_plans[2]


def test_budget_kinds(model, stats):
    assert sum(map(len, removed_of(plan_from_stats(model, stats, RankPruneConfig(num_heads=5))).values())) == 5
    head_bytes = 16 * 16 * 4
    target = 24 * head_bytes - 7 * head_bytes - 100  # needs 8 heads removed
    plan = plan_from_stats(model, stats, RankPruneConfig(target_state_bytes=target))
    assert sum(map(len, removed_of(plan).values())) == 8
    per_layer = removed_of(plan_from_stats(model, stats, RankPruneConfig(budget="per_layer", ratio=0.5)))
    assert [len(per_layer[layer]) for layer in (0, 1, 3)] == [4, 4, 4]


def test_min_heads_and_protected_layers(model, stats):
    plan = plan_from_stats(model, stats, RankPruneConfig(ratio=0.5, protected_layers=[1], min_heads_per_layer=2))
    removed = removed_of(plan)
    assert removed[1] == [] and len(removed[0]) <= 6 and len(removed[3]) <= 6
    assert sum(map(len, removed.values())) == 12 and len(removed[0]) == len(removed[3]) == 6
    with pytest.raises(PlanError, match="budget cannot be met"):
        plan_from_stats(model, stats, RankPruneConfig(ratio=0.9, protected_layers=[0, 1]))
    with pytest.raises(PlanError, match=r"protected_layers \[2\] are not linear-attention layers"):
        plan_from_stats(model, stats, RankPruneConfig(protected_layers=[2]))


def test_uniform_budget_keeps_a_stock_configuration(model, stats):
    plan = plan_from_stats(model, stats, RankPruneConfig(budget="uniform", ratio=0.5))
    assert plan.is_uniform
    for layer in plan.layers:
        kept = layer.kept_value_heads
        assert [sum(1 for h in kept if h // 4 == group) for group in (0, 1)] == [2, 2]
    with pytest.raises(PlanError, match="cannot protect layers"):
        plan_from_stats(model, stats, RankPruneConfig(budget="uniform", protected_layers=[0]))


def test_statistics_of_another_model_are_refused(stats):
    other = build_tiny_model("qwen3_next", linear_num_value_heads=4)
    with pytest.raises(StatsError, match="made for another model"):
        plan_from_stats(other, stats, RankPruneConfig())


def test_paper_setting_on_the_real_qwen3_next_80b_geometry():
    """Qwen3-Next-80B-A3B: 36 Gated DeltaNet layers x 32 value heads = 1152 heads; 38.9% global = 448 heads."""
    config = Qwen3NextConfig(
        vocab_size=151936, hidden_size=2048, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2,
        head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
        linear_value_head_dim=128, num_experts=512, num_experts_per_tok=10, moe_intermediate_size=512,
        shared_expert_intermediate_size=512, intermediate_size=5120, full_attention_interval=4,
    )  # fmt: skip
    with torch.device("meta"):
        model = Qwen3NextForCausalLM(config)
    rng = np.random.default_rng(0)
    stats = stats_for(model, [rng.integers(0, 129, 32).astype(float) for _ in range(36)],
                      [rng.uniform(1, 10, 32) for _ in range(36)])  # fmt: skip
    plan = plan_from_stats(model, stats, RankPruneConfig())
    assert len(plan.layers) == 36 and plan.settings["total_value_heads"] == 1152
    assert plan.settings["removed_value_heads"] == 448
    assert sum(la.num_value_heads - len(la.kept_value_heads) for la in plan.layers) == 448


# ------------------------------------------------------------------------------- uniform granularity
def test_uniform_budget_says_what_it_can_remove_and_rounds_down(model, stats):
    """24 heads (3 layers x 2 key heads x 4 value heads each): a uniform plan can remove 6, 12, 15, 18 or 21; a
    request in between takes the nearest count at or below it, and says so."""
    from hf_rankprune.scoring import uniform_choice

    choice = uniform_choice(model, RankPruneConfig(budget="uniform", ratio=0.389))  # 9 requested
    assert choice.options == (6, 12, 15, 18, 21)
    assert (choice.requested, choice.removed, choice.rounded) == (9, 6, True)
    assert "6, 12, 15, 18, 21 of 24" in choice.message() and "9 requested" in choice.message()
    assert "nearest at or below" in choice.message()
    plan = plan_from_stats(model, stats, RankPruneConfig(budget="uniform", ratio=0.389))
    assert plan.num_removed_value_heads == 6 and plan.is_uniform
    assert plan.settings["requested_value_heads"] == 9 and plan.settings["removed_value_heads"] == 6

    assert uniform_choice(model, RankPruneConfig(budget="uniform", num_heads=10, uniform_rounding="nearest")).removed == 12
    assert uniform_choice(model, RankPruneConfig(budget="uniform", num_heads=7, uniform_rounding="up")).removed == 12
    exact = uniform_choice(model, RankPruneConfig(budget="uniform", num_heads=12))
    assert not exact.rounded and "achievable exactly" in exact.message()


def test_uniform_budget_refuses_when_nothing_is_at_or_below(model):
    from hf_rankprune.scoring import uniform_choice

    with pytest.raises(PlanError, match=r"can remove 6, 12, 15, 18, 21 of 24 .*1 requested .*at least 6 heads"):
        uniform_choice(model, RankPruneConfig(budget="uniform", ratio=0.05))
    with pytest.raises(PlanError, match="none is at or above"):
        uniform_choice(model, RankPruneConfig(budget="uniform", num_heads=22, uniform_rounding="up"))


def test_uniform_budget_drops_whole_key_groups_for_finer_steps(model):
    """15 of 24: every layer keeps one key group of 3 value heads; the group dropped is the one with the highest mean
    priority, and the result is a stock configuration (one key head, three value heads per layer)."""
    layers = get_adapter(model).linear_layers()
    ranks = [np.array([1, 1, 1, 1, 9, 9, 9, 9], float), np.array([9, 9, 9, 9, 1, 2, 3, 4], float),
             np.array([5, 5, 5, 5, 4, 4, 4, 4], float)]  # fmt: skip
    group_stats = stats_for(model, ranks, [np.ones(8)] * len(layers))
    plan = plan_from_stats(model, group_stats, RankPruneConfig(budget="uniform", num_heads=15, score="rank"))
    assert plan.is_uniform and plan.num_removed_value_heads == 15
    assert [la.kept_key_heads for la in plan.layers] == [[0], [1], [1]]
    assert [la.kept_value_heads for la in plan.layers] == [[1, 2, 3], [4, 5, 6], [5, 6, 7]]  # ties: lowest index goes


def test_demo_model_uniform_ratio_takes_8_of_32(tmp_path):
    """The issue's case: the default ratio (12 of 32) on the demo model gives 8 with a uniform budget, not 16."""
    from hf_rankprune.loading import DEMO_MODEL_PATH, load_model_and_tokenizer
    from hf_rankprune.scoring import uniform_choice

    demo = load_model_and_tokenizer(str(DEMO_MODEL_PATH))[0]
    choice = uniform_choice(demo, RankPruneConfig(budget="uniform"))
    assert choice.options == (8, 16, 20, 24, 28) and (choice.requested, choice.removed) == (12, 8)
    with pytest.raises(PlanError, match="at least 8 heads"):
        uniform_choice(demo, RankPruneConfig(budget="uniform", ratio=0.05))


@pytest.mark.parametrize("family", ["nemotron_h", "qwen3_5"])  # SSD groups (with their B/C), GDN key heads
@pytest.mark.parametrize("budget", ["global", "per_layer", "uniform"])
def test_group_granularity_removes_whole_key_groups(family, budget):
    """Every layer keeps whole groups of its 4 value heads (2 per layer in the tiny models); the groups go by their
    heads' mean priority, and the count is the nearest the groups make (ties: the fewer)."""
    from test_recipe import synthetic_stats

    from hf_rankprune.surgery import apply_plan

    model = build_tiny_model(family)
    stats = synthetic_stats(model)
    config = RankPruneConfig(budget=budget, granularity="group", num_heads=10, uniform_rounding="nearest")
    plan = plan_from_stats(model, stats, config)
    assert plan.settings["granularity"] == "group"
    assert plan.num_removed_value_heads == {"global": 8, "per_layer": 12, "uniform": 12}[budget]
    scores = head_scores(stats, RankPruneConfig())
    for position, layer in enumerate(plan.layers):
        assert all(size == 4 for size in layer.group_sizes())  # no group lost only some of its heads
        groups = {key: scores[position][4 * key : 4 * key + 4].mean() for key in (0, 1)}
        if layer.num_kept_key_heads == 1 and budget == "per_layer":  # the saturated direction drops the higher mean
            assert layer.kept_key_heads == [min(groups, key=groups.get)]
    apply_plan(model, plan)
    adapter = get_adapter(model)
    assert [layer.num_key_heads for layer in adapter.linear_layers()] == [la.num_kept_key_heads for la in plan.layers]


def test_group_granularity_refuses_a_budget_no_group_fits():
    from test_recipe import synthetic_stats

    model = build_tiny_model("nemotron_h")
    with pytest.raises(PlanError, match="Whole key groups cannot meet this budget"):
        plan_from_stats(model, synthetic_stats(model), RankPruneConfig(budget="per_layer", granularity="group",
                                                                        num_heads=6))  # fmt: skip
