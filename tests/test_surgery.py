"""Physical head removal agrees with the original model whose removed heads are zeroed (prefill and cached decode)."""

from __future__ import annotations

import copy

import pytest
import torch
from _pruning_reference import PLANS, assert_same_outputs, expected_uniform, zeroed_reference
from conftest import build_tiny_model

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.arch.base import KEY
from hf_rankprune.integrations.accelerate_hooks import materialised_tensors
from hf_rankprune.modeling import RankPrunedGatedDeltaNet
from hf_rankprune.plan import PlanError, PrunePlan
from hf_rankprune.surgery import apply_plan, model_plan


@pytest.mark.parametrize("kind", list(PLANS))
def test_pruned_model_equals_zeroed_reference(family, kind):
    model = build_tiny_model(family)
    stock_class, stock_type = type(model), model.config.model_type
    kept = PLANS[kind]
    reference = zeroed_reference(model, kept)
    plan = PrunePlan.from_kept_heads(model_geometry(model), kept, settings={"kind": kind})
    original = model_geometry(model)
    uniform = expected_uniform(kind, original)
    assert plan.is_uniform == uniform
    returned = apply_plan(model, plan)
    assert returned is model  # pruned in place and returned, as transformers / peft transforms do
    recorded = model_plan(model)
    assert_same_outputs(model, reference)

    adapter = get_adapter(model)
    layers = {info.index: info for info in adapter.linear_layers()}
    for layer_plan in plan.layers:
        info = layers[layer_plan.layer]
        assert info.num_value_heads == layer_plan.num_kept_value_heads
        assert info.num_key_heads == layer_plan.num_kept_key_heads
        weights = adapter.canonical_weights(info.module, materialised_tensors(info.module))
        for name, axis in adapter.head_axes.items():  # every per-head tensor holds exactly the kept heads
            if axis is not None and name in weights:  # (optional tensors: biases some configs have)
                kind_of_head, dim = axis
                kept_count = info.num_key_heads if kind_of_head == KEY else info.num_value_heads
                assert weights[name].shape[dim] == kept_count, (name, weights[name].shape)
    config = model.config.get_text_config()  # the language model's (vision-language models: its text_config)
    assert config.rankprune_plan == recorded.to_dict() == plan.to_dict()
    ragged_class = adapter.ragged_layer_class()
    value_key, key_key = adapter.head_count_keys
    if plan.loads_in_stock:  # uniform, and the family's config can state it
        assert type(model) is stock_class and model.config.model_type == stock_type
        assert not any(isinstance(m, ragged_class) for m in model.modules())
        first = plan.layers[0]
        assert getattr(config, value_key) == first.num_kept_value_heads
        assert getattr(config, key_key) == first.num_kept_key_heads
    else:
        assert model.config.model_type == stock_type + "_rankpruned"
        assert isinstance(model, stock_class)
        # the stock config keeps the original counts (of the layers the plan leaves alone)
        counts = (original.layers[0].num_value_heads, original.layers[0].num_key_heads)
        assert (getattr(config, value_key), getattr(config, key_key)) == counts
        for layer_plan in plan.layers:
            info = layers[layer_plan.layer]
            assert isinstance(info.module, ragged_class) == layer_plan.is_pruned
            if layer_plan.is_pruned:
                assert (adapter.value_to_key(info) or list(range(info.num_value_heads))) == layer_plan.value_to_key


@pytest.mark.parametrize(
    "first_kind,second",
    [
        ("global", {0: [1, 3], 1: [0, 2, 6], 3: [0]}),  # ragged, then ragged
        ("uniform", {0: [0, 2], 1: [1, 3], 3: [0, 2]}),  # uniform, then uniform (drops a key head): stays stock
        ("uniform", {0: [0, 1, 2], 1: [3]}),  # uniform, then ragged
        ("ragged_groups", {0: [0, 1, 3], 1: [1], 3: [1, 2, 3]}),  # ragged, then uniform overall: back to stock
    ],
)
def test_pruning_twice_composes(first_kind, second):
    family = "qwen3_5"
    model = build_tiny_model(family)
    original = copy.deepcopy(model)
    first = PrunePlan.from_kept_heads(model_geometry(model), PLANS[first_kind])
    apply_plan(model, first)
    plan2 = PrunePlan.from_kept_heads(model_geometry(model), second)
    assert apply_plan(model, plan2) is model
    total = model_plan(model)
    assert model_plan(model).to_dict() == total.to_dict()
    expected = first.compose(plan2)
    assert total.layers == expected.layers
    kept = {layer.layer: layer.kept_value_heads for layer in total.layers}
    assert_same_outputs(model, zeroed_reference(original, kept))
    ragged_modules = any(isinstance(m, RankPrunedGatedDeltaNet) for m in model.modules())
    assert ragged_modules == (not total.is_uniform)
    assert model.config.model_type.endswith("_rankpruned") == (not total.is_uniform)


def test_plan_for_another_model_is_refused():
    model = build_tiny_model("qwen3_next")
    other = build_tiny_model("qwen3_next", linear_num_value_heads=16)
    plan = PrunePlan.from_kept_heads(model_geometry(other), {0: [0, 1]})
    with pytest.raises(PlanError, match="layer 0 has 8 value heads in the model, the plan expects 16"):
        apply_plan(model, plan)
    pruned = build_tiny_model("qwen3_next")
    apply_plan(pruned, PrunePlan.from_kept_heads(model_geometry(pruned), PLANS["global"]))
    with pytest.raises(PlanError, match="plan made for another model"):
        apply_plan(pruned, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))


@pytest.mark.parametrize("mode", ["cpu_offload", "disk_offload"])
@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_5_moe"])
def test_surgery_on_accelerate_dispatched_model(family, mode, tmp_path):
    import accelerate

    model = build_tiny_model(family)
    reference = zeroed_reference(model, PLANS["global"])
    if mode == "cpu_offload":
        accelerate.cpu_offload(model, execution_device="cpu")
    else:
        device_map = {
            "model.embed_tokens": "cpu",
            "model.layers.0": "disk",
            "model.layers.1": "disk",
            "model.layers.2": "cpu",
            "model.layers.3": "disk",
            "model.norm": "cpu",
            "model.rotary_emb": "cpu",
            "lm_head": "cpu",
        }
        model = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    assert model.model.layers[0].linear_attn.A_log.device.type == "meta"
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    attn = model.model.layers[0].linear_attn
    assert isinstance(attn, RankPrunedGatedDeltaNet)
    assert hasattr(attn, "_hf_hook") and hasattr(attn.in_proj_qkv, "_hf_hook")
    assert attn.A_log.device.type == "meta"  # still offloaded
    with torch.no_grad():
        ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(0))
        diff = (model(ids).logits - reference(ids).logits).abs().max().item()
    assert diff <= 1e-5
