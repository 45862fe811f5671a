"""Falcon-H1: what its mixer has that the other SSD families' do not.

`mup_vector` (per-segment `ssm_multipliers` over in_proj's rows; the tiny family's are all distinct) must follow the
kept rows; `mamba_rms_norm=False` (no norm: y * silu(z)) and `True` (`FalconH1RMSNormGated`, the gate after the norm
with `mamba_norm_before_gate`, before it without) both prune exactly; a uniform plan is a stock config edit of
`mamba_n_heads` / `mamba_d_ssm` / `mamba_n_groups` that stock transformers reloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _pruning_reference import PLANS, assert_same_outputs, prefill_logits, zeroed_reference
from conftest import build_tiny_model
from families.falcon_h1 import SSM_MULTIPLIERS
from test_recipe import on_meta, synthetic_stats

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan, save_pruned

REPO = Path(__file__).resolve().parents[1]
NORMS = {  # the mixer's output modes: config overrides
    "no_norm": {"mamba_rms_norm": False},
    "norm_then_gate": {"mamba_rms_norm": True, "mamba_norm_before_gate": True},
    "gate_then_norm": {"mamba_rms_norm": True, "mamba_norm_before_gate": False},
}
UNIFORM_ALL = {layer: [4, 5, 6, 7] for layer in range(4)}  # every layer is hybrid: a uniform plan covers all four


def mixers(model):
    return {layer.index: layer.module for layer in get_adapter(model).linear_layers()}


def expected_mup(heads: int, groups: int, head_dim: int = 16, state: int = 16) -> torch.Tensor:
    sizes = (heads * head_dim, heads * head_dim, groups * state, groups * state, heads)
    return torch.cat([torch.full((n,), m) for n, m in zip(sizes, SSM_MULTIPLIERS)]).view(1, 1, -1)


@pytest.mark.parametrize("norm", list(NORMS))
def test_a_ragged_mixer_with_every_head_computes_what_the_stock_mixer_computes(norm):
    model = build_tiny_model("falcon_h1", **NORMS[norm])
    stock = mixers(model)[0]
    assert isinstance(stock.norm, torch.nn.Identity) == (norm == "no_norm")
    ragged = get_adapter(model).build_ragged_layer(0, 2, 8, [0, 0, 0, 0, 1, 1, 1, 1])
    # every stock weight, strictly (mup_vector is not in state dicts: the layer's own)
    ragged.load_state_dict({**stock.state_dict(), "value_to_key": ragged.value_to_key})
    assert torch.equal(ragged.mup_vector, stock.mup_vector) and torch.equal(stock.mup_vector, expected_mup(8, 2))
    hidden = torch.randn(2, 70, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = stock(hidden)
        scale = expected.abs().max().item()  # small: a tiny random model's mixer outputs ~1e-4
        assert (expected - ragged(hidden)).abs().max().item() <= 1e-5 * scale
        ragged.mup_vector.fill_(1.0)  # the multipliers matter: a mixer without them computes something else
        assert (expected - ragged(hidden)).abs().max().item() > 0.05 * scale


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("kind", ["ragged_groups", "global"])
def test_pruned_model_equals_the_masked_reference(norm, kind):
    model = build_tiny_model("falcon_h1", **NORMS[norm])
    kept = PLANS[kind]
    reference = zeroed_reference(model, kept)
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), kept))
    assert_same_outputs(model, reference, atol=1e-5)
    for index, mixer in mixers(model).items():  # each layer's mup rows: its kept heads' and groups'
        heads, groups = len(kept.get(index, range(8))), mixer.n_groups
        assert torch.equal(mixer.mup_vector, expected_mup(heads, groups)), index
        assert mixer.in_proj.weight.shape[0] == mixer.mup_vector.shape[-1]


def test_without_the_norm_removal_equals_zeroing_the_outputs():
    """No norm, no coupling: with `mamba_rms_norm=False`, zeroing the removed heads' out_proj columns is exact."""
    model = build_tiny_model("falcon_h1", **NORMS["no_norm"])
    kept = PLANS["ragged_groups"]
    reference = zeroed_reference(model, {})  # an untouched copy
    for index, mixer in mixers(reference).items():
        if index in kept:
            columns = mixer.out_proj.weight.data.view(-1, mixer.num_heads, mixer.head_dim)
            columns[:, [h for h in range(mixer.num_heads) if h not in kept[index]]] = 0
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), kept))
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    assert (prefill_logits(model, ids) - prefill_logits(reference, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("norm", ["no_norm", "norm_then_gate"])
def test_a_uniform_plan_is_a_stock_config_that_stock_transformers_reloads(norm, tmp_path):
    from transformers import AutoModelForCausalLM, FalconH1ForCausalLM

    model = build_tiny_model("falcon_h1", **NORMS[norm])
    reference = zeroed_reference(model, UNIFORM_ALL)
    plan = PrunePlan.from_kept_heads(model_geometry(model), UNIFORM_ALL)
    assert plan.loads_in_stock
    apply_plan(model, plan)
    assert type(model) is FalconH1ForCausalLM and model.config.model_type == "falcon_h1"
    config = model.config
    assert (config.mamba_n_heads, config.mamba_n_groups, config.mamba_d_head, config.mamba_d_ssm) == (4, 1, 16, 64)
    assert all(torch.equal(m.mup_vector, expected_mup(4, 1)) for m in mixers(model).values())
    save_pruned(model, tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert (saved["mamba_n_heads"], saved["mamba_d_head"], saved["mamba_d_ssm"]) == (4, 16, 64)  # d_head a number
    assert "auto_map" not in saved
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert type(reloaded) is FalconH1ForCausalLM
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert all(torch.equal(m.mup_vector, expected_mup(4, 1)) for m in mixers(reloaded).values())
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(2))
    assert torch.equal(prefill_logits(reloaded, ids), prefill_logits(model, ids))
    assert (prefill_logits(reloaded, ids) - prefill_logits(reference, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("norm", ["no_norm", "gate_then_norm"])
def test_a_reloaded_ragged_model_rebuilds_every_mup_vector(norm, tmp_path):
    """`mup_vector` is in no checkpoint and transformers' init skips `FalconH1Model` in custom-code models: the ragged
    model class fills every mixer's (stock and ragged) at its own size."""
    from transformers import AutoModelForCausalLM

    model = build_tiny_model("falcon_h1", **NORMS[norm])
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["ragged_groups"]))  # layer 2 stays stock
    save_pruned(model, tmp_path / "pruned")
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert type(reloaded) is type(model)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    for index, mixer in mixers(reloaded).items():
        assert torch.equal(mixer.mup_vector, mixers(model)[index].mup_vector), index
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(3))
    assert torch.equal(prefill_logits(reloaded, ids), prefill_logits(model, ids))


def test_falcon_h1_recipe_makes_a_stock_uniform_plan_on_the_default_geometry():
    from transformers import FalconH1Config, FalconH1ForCausalLM

    from hf_rankprune.recipe import check_architecture, load_recipe
    from hf_rankprune.scoring import plan_from_stats

    recipe = load_recipe(REPO / "recipes" / "falcon_h1.yaml")
    model = on_meta(FalconH1ForCausalLM, FalconH1Config())
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    # 128 heads of dim 8 in one group: a quarter of them go from every mixer, the group stays
    assert plan.is_uniform and plan.loads_in_stock and len(plan.layers) == 32
    assert plan.settings["removed_value_heads"] == 32 * len(plan.layers)
    assert all(la.group_sizes() == [96] for la in plan.layers)
    assert plan.memory(context_length=2048, state_dtype="float32").state_reduction == pytest.approx(0.25)
