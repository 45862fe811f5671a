"""Head-importance scores (hf_rankprune.output_scores): kl, taylor, activation, decay, and how plans use them."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer, save_tiny_model

from hf_rankprune import RankPruneConfig, RankPruner, get_adapter
from hf_rankprune.cli import main
from hf_rankprune.config import ConfigError
from hf_rankprune.output_scores import (
    SCORE_FUNCTIONS,
    ImportanceScoreError,
    head_masks,
    importance_scores,
    kl_scores,
)
from hf_rankprune.plan import PlanError
from hf_rankprune.scoring import greedy_budget, head_scores, plan_from_scores

# tiny models: linear layers 0, 1, 3 with 8 value heads of 16 channels each (2 key heads)
SAMPLES = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
SMALL = dict(num_samples=2, seq_len=24, batch_size=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("qwen3_5")


def _scores(model, score, **overrides):
    config = RankPruneConfig(score=score, num_heads=3, **SMALL, **overrides)
    return importance_scores(model, config, SAMPLES, progress=False)


def _zero_out_proj_columns(model, layer_position: int, head: int):
    adapter = get_adapter(model)
    layer, module = adapter.head_output_modules()[layer_position]
    with torch.no_grad():
        module.weight[:, head * layer.value_dim : (head + 1) * layer.value_dim] = 0


def _zero_value_rows(model, layer_position: int, head: int):
    """Zero the head's value projection (Qwen3.5 contiguous in_proj_qkv): its state and output are exactly 0."""
    layer = get_adapter(model).linear_layers()[layer_position]
    module = layer.module
    start = 2 * module.num_k_heads * module.head_k_dim + head * layer.value_dim
    with torch.no_grad():
        module.in_proj_qkv.weight[start : start + layer.value_dim] = 0


@pytest.mark.parametrize("score", sorted(SCORE_FUNCTIONS))
def test_every_score_has_one_finite_value_per_head_and_is_deterministic(model, score):
    first, second = _scores(model, score), _scores(model, score)
    assert [s.shape for s in first.scores] == [(8,), (8,), (8,)]
    for a, b in zip(first.scores, second.scores):
        assert np.isfinite(a).all() and (a >= 0).all()
        np.testing.assert_array_equal(a, b)
    assert first.measured["score"] == score
    if score != "decay":
        assert first.measured["samples"] == 2 and first.measured["tokens"] == 48


def test_kl_of_a_head_whose_output_columns_are_zeroed_is_zero_and_the_top_head_goes_last(model):
    zeroed = copy.deepcopy(model)
    _zero_out_proj_columns(zeroed, 1, 5)
    config = RankPruneConfig(score="kl", **SMALL)
    result = kl_scores(zeroed, SAMPLES, config, progress=False, heads_per_forward=8)
    scores = result.scores
    assert scores[1][5] < 1e-9 and min(s.max() for s in scores) > 1e-6
    # one reference forward + 24 heads / 8 per forward, for the single batch
    assert result.measured["forwards"] == 4
    flat = np.concatenate(scores)
    top = np.unravel_index(int(flat.argmax()), (3, 8))
    for count in (1, 10, 21):  # 21: every layer keeps only min_heads_per_layer=1 head
        plan = plan_from_scores(zeroed, scores, config.replace(num_heads=count, ratio=None))
        removed = {(p, h) for p, layer in enumerate(plan.layers) for h in layer.removed_value_heads}
        assert (int(top[0]), int(top[1])) not in removed
        if count == 1:
            assert removed == {(1, 5)}  # the lowest (zero) KL goes first
    assert plan.settings["direction"] == "low_rank" and "least important" in plan.settings["direction_meaning"]


def test_head_mask_zero_equals_zeroed_out_proj_columns(family):
    model = build_tiny_model(family)
    zeroed = copy.deepcopy(model)
    _zero_out_proj_columns(zeroed, 0, 2)
    mask = torch.ones(8)
    mask[2] = 0
    with torch.no_grad(), head_masks(get_adapter(model), [mask, None, None]):
        masked = model(input_ids=SAMPLES).logits
    with torch.no_grad():
        reference = zeroed(input_ids=SAMPLES).logits
        plain = model(input_ids=SAMPLES).logits  # the hook is gone after the block
    torch.testing.assert_close(masked, reference)
    assert not torch.allclose(plain, reference)


def test_taylor_and_activation_are_zero_for_a_zeroed_head(model):
    zeroed = copy.deepcopy(model)
    _zero_out_proj_columns(zeroed, 2, 6)
    assert _scores(zeroed, "taylor").scores[2][6] == 0
    silent = copy.deepcopy(model)
    _zero_value_rows(silent, 0, 1)
    activation = _scores(silent, "activation").scores
    assert activation[0][1] == 0 and min(s.min() for s in activation[1:]) > 0
    assert _scores(silent, "taylor").scores[0][1] == 0
    assert all(p.requires_grad for p in silent.parameters())  # restored after the backward passes


def test_decay_is_data_free_and_decreasing_in_a_log(model):
    monotone = copy.deepcopy(model)
    layer = get_adapter(monotone).linear_layers()[0].module
    with torch.no_grad():
        layer.A_log.copy_(torch.linspace(-5.0, 2.0, 8))
    result = importance_scores(monotone, RankPruneConfig(score="decay"), None, progress=False)
    assert (np.diff(result.scores[0]) < 0).all()
    assert result.measured["forwards"] == 0 and result.measured["data"] is None


def test_greedy_kl_removes_its_order_under_every_budget(model):
    config = RankPruneConfig(score="kl", kl_greedy=True, num_heads=3, ratio=None, **SMALL)
    result = importance_scores(model, config, SAMPLES, budget=greedy_budget(model, config), progress=False)
    order = result.measured["greedy_removal_order"]
    assert len(order) == 3 and result.measured["greedy"] is True
    layers = [0, 1, 3]
    plan = plan_from_scores(model, result.scores, config, result.measured)
    removed = sorted([layer.layer, h] for layer in plan.layers for h in layer.removed_value_heads)
    assert removed == sorted(order)
    scored = [result.scores[layers.index(layer)][head] for layer, head in order]
    assert scored == sorted(scored) and max(scored) < min(
        s for p, values in enumerate(result.scores) for h, s in enumerate(values) if [layers[p], h] not in order
    )
    # per layer: the greedy order respects each layer's quota (one head each)
    per_layer = config.replace(budget="per_layer")
    budget = greedy_budget(model, per_layer)
    assert budget.caps == [1, 1, 1] and budget.heads == 3
    result = importance_scores(model, per_layer, SAMPLES, budget=budget, progress=False)
    assert sorted(layer for layer, _ in result.measured["greedy_removal_order"]) == [0, 1, 3]


def test_importance_scores_work_with_every_budget_and_direction(model):
    scores = [np.arange(8, dtype=float) + 10 * p for p in range(3)]  # head 0 of layer 0 is the least important
    base = RankPruneConfig(score="taylor", num_heads=6, ratio=None)
    lowest = plan_from_scores(model, scores, base)
    assert lowest.layers[0].removed_value_heads == [0, 1, 2, 3, 4, 5]
    per_layer = plan_from_scores(model, scores, base.replace(budget="per_layer"))
    assert [layer.removed_value_heads for layer in per_layer.layers] == [[0, 1]] * 3
    uniform = plan_from_scores(model, scores, base.replace(budget="uniform", uniform_rounding="nearest"))
    assert all(layer.removed_value_heads == [0, 4] for layer in uniform.layers)  # the lowest of each key group
    with pytest.warns(UserWarning, match="MOST important"):
        highest = plan_from_scores(model, scores, base.replace(direction="saturated"))
    assert highest.layers[2].removed_value_heads == [2, 3, 4, 5, 6, 7]
    assert "MOST important" in highest.settings["direction_meaning"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_from_scores(model, scores, base.replace(direction="random"))
    with pytest.raises(PlanError, match="value heads"):
        plan_from_scores(model, scores[:2], base)


def test_config_and_bad_input():
    assert RankPruneConfig().removal_direction() == "saturated"
    assert RankPruneConfig(score="kl").removal_direction() == "low_rank"
    assert RankPruneConfig(score="kl", direction="saturated").removal_direction() == "saturated"
    assert not RankPruneConfig(score="decay").needs_rank_stats() and RankPruneConfig().needs_rank_stats()
    with pytest.raises(ConfigError, match="score='entropy' is not allowed"):
        RankPruneConfig(score="entropy")
    with pytest.raises(ConfigError, match="kl_greedy"):
        RankPruneConfig(kl_greedy="yes")
    with pytest.raises(PlanError, match="importance score"):
        head_scores(None, RankPruneConfig(score="kl"))
    with pytest.raises(ImportanceScoreError, match="calibration samples"):
        importance_scores(None, RankPruneConfig(score="taylor"), None)


def test_pruner_without_a_tokenizer_refuses_data_scores_before_any_forward(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        pruner = RankPruner(model, None, RankPruneConfig(score="kl", budget="per_layer", num_heads=3, ratio=None))
        with pytest.raises(ValueError, match="needs a tokenizer"):
            pruner.plan()
        assert not calls
        decay = RankPruner(model, None, RankPruneConfig(score="decay", budget="per_layer", num_heads=3, ratio=None))
        plan = decay.plan()  # data-free: no tokenizer, no calibration, no forward
        assert plan.num_removed_value_heads == 3 and decay.stats is None and not calls
        assert plan.settings["score_measured"]["forwards"] == 0
    finally:
        handle.remove()


def test_pruner_measures_activation_without_rank_calibration():
    pruner = RankPruner(build_tiny_model("qwen3_5"), build_tiny_tokenizer(),
                        RankPruneConfig(score="activation", budget="per_layer", num_heads=3, ratio=None, **SMALL))  # fmt: skip
    plan = pruner.plan()
    assert pruner.stats is None and plan.settings["score"] == "activation"
    assert plan.settings["calibration_samples"] == 2 and plan.settings["score_measured"]["forwards"] == 1


def test_cli_prune_with_kl_on_a_per_layer_budget_loads_back(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    folder = save_tiny_model("qwen3_5", tmp_path / "model")
    out = tmp_path / "pruned"
    code = main(["prune", str(folder), "--out", str(out), "--score", "kl", "--budget", "per_layer", "--num-heads",
                 "3", "--num-samples", "2", "--seq-len", "24", "--batch-size", "2", "--quiet"])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "kl: 24 heads x 1 batches" in stdout and "7 forward passes" in stdout
    plan = json.loads((out / "prune_plan.json").read_text())
    settings = plan["settings"]
    assert settings["score"] == "kl" and settings["direction"] == "low_rank"
    assert settings["score_measured"]["forwards"] == 7 and settings["calibration_samples"] == 2
    assert [len(layer["kept_value_heads"]) for layer in plan["layers"]] == [7, 7, 7]
    assert "score_measured" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert [layer.num_value_heads for layer in get_adapter(model).linear_layers()] == [7, 7, 7]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=SAMPLES).logits).all()


def test_scores_on_a_ragged_pruned_model(model):
    from hf_rankprune import apply_plan

    pruned = copy.deepcopy(model)
    config = RankPruneConfig(score="decay", num_heads=5, ratio=None)
    apply_plan(pruned, plan_from_scores(pruned, importance_scores(pruned, config, progress=False).scores, config))
    heads = [layer.num_value_heads for layer in get_adapter(pruned).linear_layers()]
    assert sum(heads) == 19 and len(set(heads)) > 1  # ragged
    for score in ("kl", "taylor", "activation"):
        assert [len(s) for s in _scores(pruned, score).scores] == heads


def test_the_report_correlates_decay_with_the_calibrated_rank(model, tmp_path):
    from hf_rankprune import calibrate, write_report
    from hf_rankprune.report import analyze, decay_rank_correlation

    stats = calibrate(model, SAMPLES.repeat(1, 3), RankPruneConfig(grid_step=24), progress=False)
    decay = importance_scores(model, RankPruneConfig(score="decay"), progress=False, verbose=False).scores
    analysis = write_report(stats, tmp_path, decay=decay)
    rho = analysis["decay"]["spearman_with_mean_rank"]
    assert -1 <= rho <= 1 and set(analysis["decay"]["spearman_with_mean_rank_per_layer"]) == {"0", "1", "3"}
    assert "## Decay and rank" in (tmp_path / "report.md").read_text()
    assert "decay" not in analyze(stats)
    with pytest.raises(ValueError, match="heads per layer"):
        decay_rank_correlation(stats, decay[:2])


def test_apply_recipe_with_an_importance_score(model):
    from hf_rankprune import apply_recipe

    pruned = copy.deepcopy(model)
    plan = apply_recipe(pruned, RankPruneConfig(score="taylor", num_heads=3, ratio=None, **SMALL), data=SAMPLES)
    assert plan.num_removed_value_heads == 3 and plan.settings["score_measured"]["backwards"] == 1
