"""Kimi delta attention families (Kimi-Linear, Bailing hybrid, GLM-5 Next): what differs from the gated delta rule.

No key-head groups (a ragged layer is the stock layer with its own head count, calling hf_rankprune's kernels), fp32
parameters beside bf16 projections, head counts stored twice in checkpoints (`linear_attn_config`) or derived from a
field the MLA layers share (Bailing), per-channel decay behind three gate formulas, and the shipped recipes on the
released geometries.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _pruning_reference import PLANS
from conftest import build_tiny_model, save_tiny_model
from test_recipe import on_meta, synthetic_stats

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.loading import load_model_and_tokenizer
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan, save_pruned

KDA = ["bailing_hybrid", "glm5_next", "kimi_linear"]
# parameters transformers keeps in fp32 in a bf16 model (`_keep_in_fp32_modules_strict`)
FP32 = {
    "kimi_linear": ("forget_gate.dt_bias",),
    "bailing_hybrid": ("conv1d.weight", "forget_gate.dt_bias", "forget_gate.A_log"),
    "glm5_next": ("conv1d.weight", "forget_gate.dt_bias", "forget_gate.A_log"),
}
REPO = Path(__file__).resolve().parents[1]


def kda_layers(model):
    return [layer.module for layer in get_adapter(model).linear_layers()]


@pytest.mark.parametrize("family", KDA)
def test_fp32_parameters_stay_fp32_through_surgery_save_and_reload(family, tmp_path):
    source = save_tiny_model(family, tmp_path / "source")
    model, tokenizer = load_model_and_tokenizer(str(source), dtype="bfloat16")
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))  # ragged
    reloaded, _ = load_model_and_tokenizer(str(save_pruned(model, tmp_path / "pruned", tokenizer)), dtype="bfloat16")
    for candidate in (model, reloaded):
        for layer in kda_layers(candidate):
            dtypes = {name: param.dtype for name, param in layer.named_parameters()}
            assert all(dtypes[name] == torch.float32 for name in FP32[family]), dtypes
            assert dtypes["q_proj.weight"] == dtypes["o_proj.weight"] == torch.bfloat16
    for (name, before), after in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert before.dtype == after.dtype and torch.equal(before, after), name


@pytest.mark.parametrize("family", KDA)
def test_uniform_plans_edit_every_place_the_head_count_is_stored(family, tmp_path):
    import json

    source = save_tiny_model(family, tmp_path / "source")
    model, tokenizer = load_model_and_tokenizer(str(source))
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["uniform"]))
    folder = save_pruned(model, tmp_path / "pruned", tokenizer)
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config", config)
    assert text["linear_num_heads"] == 4
    if "linear_attn_config" in text:  # Kimi-Linear checkpoints (and GLM's, when they carry it) store it twice
        assert text["linear_attn_config"]["num_heads"] == 4
    if family == "bailing_hybrid":  # derived from num_attention_heads, which the MLA layers keep
        assert text["num_attention_heads"] == 8
    reloaded, _ = load_model_and_tokenizer(str(folder))
    assert [layer.num_heads for layer in kda_layers(reloaded)] == [4, 4, 4]


def test_kimi_linear_attn_config_wins_on_reload_so_both_are_edited():
    """The reason for editing `linear_attn_config`: a config whose dict still says 8 heads reloads with 8."""
    from transformers import KimiLinearConfig

    model = build_tiny_model("kimi_linear")
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["uniform"]))
    values = model.config.to_dict()
    assert KimiLinearConfig.from_dict(values).linear_num_heads == 4
    values["linear_attn_config"] = {**values["linear_attn_config"], "num_heads": 8}
    assert KimiLinearConfig.from_dict(values).linear_num_heads == 8


@pytest.mark.parametrize("family", KDA)
def test_a_ragged_layer_with_every_head_computes_what_the_stock_layer_computes(family):
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    stock = kda_layers(model)[0]
    ragged = adapter.build_ragged_layer(0, 8, 8, range(8))
    ragged.load_state_dict(stock.state_dict())
    hidden = torch.randn(2, 70, model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = stock(hidden), ragged(hidden)
    assert (expected - actual).abs().max().item() <= 1e-5
    assert type(ragged).__name__ == f"RankPruned{type(stock).__name__}" and isinstance(ragged, type(stock))


@pytest.mark.parametrize("family", KDA)
def test_a_ragged_layer_refuses_key_groups(family):
    adapter = get_adapter(build_tiny_model(family))
    with pytest.raises(ValueError, match="pairs value head h with key head h"):
        adapter.build_ragged_layer(0, 2, 4, [0, 0, 1, 1])


def softplus_thresholded(x):
    return torch.where(x > 20, x, torch.log1p(torch.exp(x)))


@pytest.mark.parametrize("family", KDA)
def test_gate_log_decay_is_each_familys_formula_at_a_zero_input(family):
    """Written from the papers' formulas, independently of the layers' forget gates the adapter calls."""
    model = build_tiny_model(family)
    config = model.config.get_text_config()
    for layer, decay in zip(kda_layers(model), get_adapter(model).gate_log_decay()):
        rate = layer.forget_gate.A_log.detach().double().reshape(-1, 1).exp()  # [H, 1]
        dt_bias = layer.forget_gate.dt_bias.detach().double().reshape(layer.num_heads, -1)  # [H, d]
        bound = {"bailing_hybrid": config.kda_lower_bound if getattr(config, "kda_safe_gate", False) else None,
                 "glm5_next": getattr(config, "linear_lower_bound", None), "kimi_linear": None}[family]  # fmt: skip
        expected = bound * torch.sigmoid(rate * dt_bias) if bound is not None else -rate * softplus_thresholded(dt_bias)
        torch.testing.assert_close(decay, expected.mean(dim=1), rtol=1e-6, atol=1e-7)
        assert decay.shape == (8,) and (decay <= 0).all() and decay.max() - decay.min() > 0.5


RECIPE_MODELS = {  # recipe: (model class, config class, expected KDA layers x heads, heads removed per layer)
    "kimi_linear.yaml": ("KimiLinearForCausalLM", "KimiLinearConfig", 21, 32, 12),
    "bailing_hybrid.yaml": ("BailingHybridForCausalLM", "BailingHybridConfig", 35, 32, 12),
    "glm5_next.yaml": ("Glm5NextForConditionalGeneration", "Glm5NextConfig", 34, 64, 24),
}


@pytest.mark.parametrize("recipe_name", sorted(RECIPE_MODELS))
def test_recipe_makes_a_stock_uniform_plan_on_the_released_geometry(recipe_name):
    import transformers

    from hf_rankprune.recipe import check_architecture, load_recipe
    from hf_rankprune.scoring import plan_from_stats

    model_class, config_class, layers, heads, removed = RECIPE_MODELS[recipe_name]
    recipe = load_recipe(REPO / "recipes" / recipe_name)
    model = on_meta(getattr(transformers, model_class), getattr(transformers, config_class)())
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    assert plan.is_uniform and len(plan.layers) == layers
    assert plan.settings["total_value_heads"] == layers * heads
    assert plan.settings["removed_value_heads"] == layers * removed
    assert all(la.num_kept_value_heads == la.num_kept_key_heads == heads - removed for la in plan.layers)
    assert plan.memory(context_length=2048, state_dtype="float32").state_reduction == pytest.approx(removed / heads)
