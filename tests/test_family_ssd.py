"""Mamba2 SSD families: what differs from the delta-rule families.

A group's gated norm spans its heads, so exactness is against the original with the removed heads masked inside the
mixer (tests/_pruning_reference.py `mask_ssd_heads`), which zeroing their outputs is not; groups (key heads) go with
their last head; a stock layout may not copy a group; the activation score reads the heads' x channels of in_proj.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from _pruning_reference import PLANS, assert_same_outputs, prefill_logits, zeroed_reference
from conftest import build_tiny_model
from families import FAMILIES
from test_recipe import on_meta, synthetic_stats

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.plan import PlanError, PrunePlan
from hf_rankprune.surgery import apply_plan

SSD = sorted(name for name in FAMILIES if get_adapter(build_tiny_model(name)).family == "mamba2_ssd")
REPO = Path(__file__).resolve().parents[1]


def mixers(model):
    return [layer.module for layer in get_adapter(model).linear_layers()]


@pytest.mark.parametrize("family", SSD)
def test_removal_equals_masking_inside_the_mixer_not_zeroing_the_output(family):
    model = build_tiny_model(family)
    kept = PLANS["ragged_groups"]
    masked = zeroed_reference(model, kept)  # masked inside the mixer for SSD families
    zeroed = copy.deepcopy(model)
    for mixer in mixers(zeroed):  # the delta-rule families' reference: the removed heads' out_proj columns zeroed
        if mixer.layer_idx in kept:
            columns = mixer.out_proj.weight.data.view(-1, mixer.num_heads, mixer.head_dim)
            columns[:, [h for h in range(mixer.num_heads) if h not in kept[mixer.layer_idx]]] = 0
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), kept))
    assert_same_outputs(model, masked)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(1))
    assert (prefill_logits(model, ids) - prefill_logits(zeroed, ids)).abs().max() > 1e-4  # the norm couples heads


@pytest.mark.parametrize("family", SSD)
def test_a_group_goes_with_its_last_head(family):
    model = build_tiny_model(family)
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))  # layer 3 keeps head 7 only
    mixer = {m.layer_idx: m for m in mixers(model)}[3]
    heads, groups, head_dim, state = mixer.num_heads, mixer.n_groups, mixer.head_dim, mixer.ssm_state_size
    assert (heads, groups) == (1, 1) and mixer.value_to_key.tolist() == [0]
    assert mixer.in_proj.weight.shape[0] == 2 * heads * head_dim + 2 * groups * state + heads
    assert mixer.conv1d.weight.shape[0] == heads * head_dim + 2 * groups * state


@pytest.mark.parametrize("family", SSD)
def test_a_ragged_mixer_with_every_head_computes_what_the_stock_mixer_computes(family):
    model = build_tiny_model(family)
    stock = mixers(model)[0]
    consecutive = torch.arange(stock.num_heads) // (stock.num_heads // stock.n_groups)
    ragged = get_adapter(model).build_ragged_layer(0, stock.n_groups, stock.num_heads, consecutive.tolist())
    ragged.load_state_dict({**stock.state_dict(), "value_to_key": consecutive})  # every stock weight, strictly
    hidden = torch.randn(2, 70, stock.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (stock(hidden) - ragged(hidden)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", SSD)
def test_a_stock_layout_copying_a_group_is_refused_before_any_change(family):
    model = build_tiny_model(family)
    before = copy.deepcopy(model.state_dict())
    kept = {2: PLANS["equal_counts"][0], **PLANS["equal_counts"]}  # layer 2 too where it is a mixer (Mamba2, Zamba2)
    kept = {layer: heads for layer, heads in kept.items() if layer in [m.layer_idx for m in mixers(model)]}
    plan = PrunePlan.from_kept_heads(model_geometry(model), kept).to_stock_layout()
    assert plan.num_replicated_key_heads
    with pytest.raises(PlanError, match="copies an SSD group"):
        apply_plan(model, plan)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("family", SSD)
def test_activation_score_reads_the_x_channels_of_in_proj(family):
    from hf_rankprune.config import RankPruneConfig
    from hf_rankprune.output_scores import activation_scores

    model = build_tiny_model(family)
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(2))
    scores = activation_scores(model, ids, RankPruneConfig(seq_len=32, batch_size=2), progress=False, verbose=False)
    captured = []
    mixer = mixers(model)[0]
    handle = mixer.in_proj.register_forward_hook(lambda m, args, out: captured.append(out.detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    inner = mixer.intermediate_size
    x = captured[0][..., inner : 2 * inner].abs().mean(dim=1)  # [samples, H * P]: mean over tokens
    expected = x.pow(2).sum(dim=0).sqrt().reshape(mixer.num_heads, mixer.head_dim).norm(dim=1)
    torch.testing.assert_close(torch.as_tensor(scores.scores[0]).float(), expected, rtol=1e-4, atol=1e-6)


RECIPES = {  # recipe: (model class, config class, kept heads per group, groups kept, stock-loadable)
    "nemotron_h.yaml": ("NemotronHForCausalLM", "NemotronHConfig", 13, 6, True),  # of 8 groups of 16: two groups go
    "bamba.yaml": ("BambaForCausalLM", "BambaConfig", 79, 1, False),  # of 1 group of 128
    "granitemoehybrid.yaml": ("GraniteMoeHybridForCausalLM", "GraniteMoeHybridConfig", 79, 1, False),
}


@pytest.mark.parametrize("recipe_name", sorted(RECIPES))
def test_recipe_makes_a_uniform_plan_on_the_default_geometry(recipe_name):
    import transformers

    from hf_rankprune.recipe import check_architecture, load_recipe
    from hf_rankprune.scoring import plan_from_stats

    model_class, config_class, per_group, groups, stock = RECIPES[recipe_name]
    recipe = load_recipe(REPO / "recipes" / recipe_name)
    model = on_meta(getattr(transformers, model_class), getattr(transformers, config_class)())
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    assert plan.is_uniform and plan.loads_in_stock == stock
    assert all(la.group_sizes() == [per_group] * groups for la in plan.layers)
    kept = per_group * groups / plan.layers[0].num_value_heads
    assert plan.memory(context_length=2048, state_dtype="float32").state_reduction == pytest.approx(1 - kept)


@pytest.mark.parametrize("family", SSD)
def test_uniform_plans_are_stock_checkpoints_only_where_the_config_can_state_them(family, tmp_path):
    from conftest import save_tiny_model

    from hf_rankprune.loading import load_model_and_tokenizer
    from hf_rankprune.surgery import save_pruned

    model, tokenizer = load_model_and_tokenizer(str(save_tiny_model(family, tmp_path / "source")))
    stock = get_adapter(model).stock_config_takes_uniform_plans
    stock_type = model.config.model_type
    kept = {m.layer_idx: PLANS["uniform"].get(m.layer_idx, PLANS["uniform"][0]) for m in mixers(model)}
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), kept))  # uniform over every mixer
    assert model.config.model_type == (stock_type if stock else f"{stock_type}_rankpruned")
    folder = save_pruned(model, tmp_path / "pruned", tokenizer)
    assert (folder / "modeling_rankpruned.py").exists() != stock  # remote code where stock transformers cannot load
    reloaded, _ = load_model_and_tokenizer(str(folder))
    assert type(reloaded).__name__ == type(model).__name__
    for (name, before), after in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(before, after), name


@pytest.mark.parametrize("family", ["bamba", "nemotron_h"])
def test_the_card_says_what_loads_a_uniform_checkpoint(family):
    from hf_rankprune.card import build_model_card

    model = build_tiny_model(family)
    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS["uniform"])
    text = build_model_card(plan, base_model_name="tiny").text
    assert "uniform plan (same head counts in every layer)" in text
    assert "Every head of a linear-attention layer (Mamba2 SSD)" in text
    stock = plan.loads_in_stock
    assert ("cannot\nstate fewer heads" in text or "cannot state fewer heads" in text) == (not stock)
    assert ("trust_remote_code=True" in text) == (not stock)
