"""The PrunePlan contract: derivation of key heads and maps, uniformity, validation, composition, memory, JSON."""

from __future__ import annotations

import pytest
import torch
from _pruning_reference import PLANS, UNIFORM
from conftest import build_tiny_model

from hf_rankprune.arch import model_geometry
from hf_rankprune.plan import LayerPlan, PlanError, PrunePlan


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("qwen3_next")


def test_from_kept_heads_derives_keys_and_map(model):
    plan = PrunePlan.from_kept_heads(model_geometry(model), {0: [5, 0, 3, 2], 3: [7]}, scores={0: [0.1] * 8}, settings={"a": 1})
    assert plan.model_type == "qwen3_next" and plan.layer_indices == [0, 1, 3]
    layer0 = plan.layer(0)
    assert layer0.kept_value_heads == [0, 2, 3, 5] and layer0.kept_key_heads == [0, 1]
    assert layer0.value_to_key == [0, 0, 0, 1] and layer0.group_sizes() == [3, 1]
    assert layer0.removed_value_heads == [1, 4, 6, 7] and layer0.removed_key_heads == []
    layer3 = plan.layer(3)
    assert layer3.kept_key_heads == [1] and layer3.value_to_key == [0] and layer3.removed_key_heads == [0]
    assert not plan.layer(1).is_pruned and plan.layer(1).kept_value_heads == list(range(8))
    assert plan.num_removed_value_heads == 11 and plan.removed_fraction == pytest.approx(11 / 24)
    assert plan.scores == {0: [0.1] * 8} and plan.settings == {"a": 1}
    removed = PrunePlan.from_removed_heads(model_geometry(model), {0: [1, 4, 6, 7], 3: range(7)})
    assert removed.layers == plan.layers


@pytest.mark.parametrize("kind", list(PLANS))
def test_is_uniform(model, kind):
    assert PrunePlan.from_kept_heads(model_geometry(model), PLANS[kind]).is_uniform == (kind in UNIFORM)


def test_is_uniform_edge_cases(model):
    assert PrunePlan.identity(model_geometry(model)).is_uniform and PrunePlan.identity(model_geometry(model)).is_identity
    # same counts everywhere but unequal groups in one layer
    assert not PrunePlan.from_kept_heads(model_geometry(model), {0: [0, 1, 2, 4], 1: [0, 1, 4, 5], 3: [0, 1, 4, 5]}).is_uniform
    # only some layers pruned
    assert not PrunePlan.from_kept_heads(model_geometry(model), {0: [0, 1, 4, 5]}).is_uniform


def test_json_round_trip(model, tmp_path):
    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"], scores={0: [float(i) for i in range(8)]}, settings={"x": [1]})
    path = tmp_path / "plan.json"
    plan.to_json_file(path)
    again = PrunePlan.from_json_file(path)
    assert again == plan and again.to_dict() == plan.to_dict()
    assert PrunePlan.from_dict(plan.to_dict()).scores == {0: [float(i) for i in range(8)]}


@pytest.mark.parametrize(
    "kept,message",
    [
        ({0: []}, "layer 0: the plan would remove every value head"),
        ({0: [1, 1, 2]}, "layer 0: duplicate value heads"),
        ({0: [0, 8]}, r"layer 0: value heads \[8\] are out of range \(the layer has 8\)"),
        ({2: [0]}, r"layers \[2\] are not linear-attention layers"),
    ],
)
def test_bad_kept_heads(model, kept, message):
    with pytest.raises(PlanError, match=message):
        PrunePlan.from_kept_heads(model_geometry(model), kept)


def test_malformed_dicts_are_rejected(model):
    values = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]).to_dict()
    values["layers"][0]["kept_key_heads"] = [1]
    with pytest.raises(PlanError, match="kept key heads"):
        PrunePlan.from_dict(values)
    # the lists are the pruned layer's physical order: a reordering must keep each value head with its key head
    values = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]).to_dict()
    values["layers"][0]["kept_value_heads"] = [5, 0, 2, 3]
    with pytest.raises(PlanError, match="inconsistent with the kept heads"):
        PrunePlan.from_dict(values)
    values["layers"][0]["kept_key_heads"] = [0, 0, 1]
    values["layers"][0]["kept_value_heads"] = [0, 2, 3, 5]
    values["layers"][0]["value_to_key"] = [0, 0, 0, 2]
    with pytest.raises(PlanError, match="one that no kept value head reads"):
        PrunePlan.from_dict(values)
    with pytest.raises(PlanError, match="missing"):
        PrunePlan.from_dict({"layers": []})
    with pytest.raises(PlanError, match="appears twice"):
        layer = LayerPlan.from_kept(0, 2, 8, 16, 16, [0])
        PrunePlan(model_type="x", layers=[layer, layer])


def test_validate_for(model):
    other = build_tiny_model("qwen3_next", linear_num_value_heads=16)
    plan = PrunePlan.from_kept_heads(model_geometry(other), {0: [0]})
    with pytest.raises(PlanError, match="plan made for another model: layer 0 has 8 value heads in the model, the plan "
                       "expects 16"):
        plan.validate_for(model_geometry(model))
    fewer = build_tiny_model("qwen3_next", layer_types=["linear_attention", "full_attention"] * 2)
    with pytest.raises(PlanError, match=r"its linear layers are \[0, 1, 3\], the model's are \[0, 2\]"):
        PrunePlan.identity(model_geometry(model)).validate_for(model_geometry(fewer))
    wider = build_tiny_model("qwen3_next", linear_key_head_dim=32)
    with pytest.raises(PlanError, match="layer 0 has 32 key head dim in the model, the plan expects 16"):
        PrunePlan.identity(model_geometry(model)).validate_for(model_geometry(wider))
    PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]).validate_for(model_geometry(model))


def test_compose_expresses_second_plan_in_original_indices(model):
    first = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"], scores={0: [float(i) for i in range(8)]}, settings={"s": 1})
    # indices of the model pruned by `first`: layer 0 keeps [0, 2, 3, 5] (keys 0, 1), layer 3 keeps [7] (key 1)
    second = PrunePlan(
        model_type=first.model_type,
        layers=[
            LayerPlan.from_kept(0, 2, 4, 16, 16, [1, 3], source_value_to_key=[0, 0, 0, 1]),
            LayerPlan.from_kept(1, 2, 7, 16, 16, [0, 1, 2], source_value_to_key=[0, 0, 0, 1, 1, 1, 1]),
            LayerPlan.from_kept(3, 1, 1, 16, 16, [0]),
        ],
        scores={0: [10.0, 11.0, 12.0, 13.0]},
        settings={"s": 2},
    )
    total = first.compose(second)
    assert total.layer(0).kept_value_heads == [2, 5] and total.layer(0).kept_key_heads == [0, 1]
    assert total.layer(0).value_to_key == [0, 1]
    assert total.layer(1).kept_value_heads == [1, 2, 3] and total.layer(1).kept_key_heads == [0]
    assert total.layer(3).kept_value_heads == [7] and total.layer(3).kept_key_heads == [1]
    # the second plan scores the 4 heads of its input model (original heads 0, 2, 3, 5)
    assert total.scores[0] == [10.0, 1.0, 11.0, 12.0, 4.0, 13.0, 6.0, 7.0]
    assert total.settings == {"steps": [{"s": 1}, {"s": 2}]}
    total.validate_for(model_geometry(model))
    assert total.layer(0).num_value_heads == 8
    with pytest.raises(PlanError, match="cannot compose"):
        first.compose(PrunePlan.identity(model_geometry(model)))


def test_memory_accounting(model):
    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"])
    memory = plan.memory(context_length=1000, batch_size=2)
    per_head = 16 * 16 * 4 * 2  # K * V * fp32 * batch
    assert [m.state_bytes_before for m in memory.layers] == [8 * per_head] * 3
    assert [m.state_bytes_after for m in memory.layers] == [4 * per_head, 7 * per_head, 1 * per_head]
    assert memory.state_reduction == pytest.approx(12 / 24)
    # conv: (2 * nk * dk + nv * dv) channels x kernel 4, model dtype fp32, batch 2
    assert memory.layers[2].conv_bytes_before == (2 * 2 * 16 + 8 * 16) * 4 * 4 * 2
    assert memory.layers[2].conv_bytes_after == (2 * 1 * 16 + 1 * 16) * 4 * 4 * 2
    # one full-attention layer: 2 * kv_heads(2) * head_dim(16) * T * 4 bytes * batch
    assert memory.kv_cache_bytes == 2 * 2 * 16 * 1000 * 4 * 2
    assert memory.total_bytes_before == memory.state_bytes_before + memory.conv_bytes_before + memory.kv_cache_bytes
    assert 0 < memory.total_reduction < memory.state_reduction
    half = plan.memory(context_length=1000, state_dtype=torch.bfloat16, kv_dtype="bfloat16")
    assert half.state_bytes_before == 3 * 8 * 16 * 16 * 2 and half.kv_cache_bytes == 2 * 2 * 16 * 1000 * 2
    assert memory.to_dict()["state_reduction"] == pytest.approx(12 / 24)


def test_paper_figure_on_real_head_shapes():
    """Qwen3-Next-80B geometry: 36 linear layers x 32 value heads of 128 x 128; 448 heads removed = 38.9%."""
    layers = []
    for index in range(36):
        keep = 32 - (13 if index < 16 else 12)  # 16 * 13 + 20 * 12 = 448
        layers.append(LayerPlan.from_kept(index, 16, 32, 128, 128, range(keep)))
    plan = PrunePlan(
        model_type="qwen3_next",
        layers=layers,
        model_info={"full_attention_layers": list(range(12)), "num_key_value_heads": 2, "head_dim": 256,
                    "conv_kernel_size": 4, "dtype": "bfloat16"},
    )
    memory = plan.memory(context_length=32768)
    assert plan.num_removed_value_heads == 448 and memory.state_reduction == pytest.approx(448 / 1152)
    assert memory.state_bytes_before == 36 * 32 * 128 * 128 * 4
    assert memory.kv_cache_bytes == 12 * 2 * 2 * 256 * 32768 * 2


def test_stock_layout_replicates_the_fewest_key_heads(model):
    """Equal counts, unequal groups: value heads regrouped by key head, key heads copied so every group has the
    greatest common size; the result is uniform (a stock config) and keeps the same heads."""
    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS["equal_counts"])
    assert not plan.is_uniform
    stock = plan.to_stock_layout()
    assert stock.is_uniform and stock.settings["layout"] == "stock"
    layer = stock.layer(0)  # kept 0-3 (key 0) and 4-5 (key 1): groups of 2
    assert layer.kept_key_heads == [0, 0, 1] and layer.value_to_key == [0, 0, 1, 1, 2, 2]
    assert stock.num_replicated_key_heads == 3  # one extra key head in each of the three layers
    for before, after in zip(plan.layers, stock.layers):
        assert sorted(after.kept_value_heads) == before.kept_value_heads
    memory = stock.memory()
    assert memory.state_bytes_after == plan.memory().state_bytes_after
    assert memory.conv_bytes_after > plan.memory().conv_bytes_after  # the replicas' q/k conv channels
    odd = PrunePlan.from_kept_heads(model_geometry(model), PLANS["equal_counts_odd"]).to_stock_layout()
    assert all(layer.value_to_key == [0, 1, 2] for layer in odd.layers)  # groups of 1 and 2 -> groups of 1
    assert odd.layer(1).kept_key_heads == [0, 1, 1]
    with pytest.raises(PlanError, match="same number of value heads in every linear layer"):
        PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]).to_stock_layout()
    assert PrunePlan.from_dict(stock.to_dict()).to_dict() == stock.to_dict()
