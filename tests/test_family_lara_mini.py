"""What is Lara-4-Mini's own: its gated norm multiplies the weight in fp32, so a ragged layer must too (bf16 outputs
bit-equal to the stock layer's), and its checkpoints keep the fused on-disk `in_proj` after pruning."""

from __future__ import annotations

import torch
from conftest import build_tiny_model
from safetensors import safe_open

from hf_rankprune.arch import get_adapter
from hf_rankprune.integrations.accelerate_hooks import materialised_tensors
from hf_rankprune.modeling import LAYER_OPTIONS_KEY, RankPrunedGatedDeltaNet


def ragged_copy(adapter, stock, options):
    """The stock layer rebuilt as a ragged layer that keeps every head, with `options`."""
    setattr(adapter.config, LAYER_OPTIONS_KEY, options)
    weights = adapter.canonical_weights(stock, materialised_tensors(stock))
    ragged = RankPrunedGatedDeltaNet(adapter.config, 0, stock.num_k_heads, stock.num_v_heads, weights["value_to_key"])
    ragged.load_state_dict(adapter.ragged_state(weights))
    return ragged.to(torch.bfloat16)


def test_ragged_layer_matches_the_stock_norm_in_bf16():
    model = build_tiny_model("lara_mini").to(torch.bfloat16)
    adapter = get_adapter(model)
    stock = model.model.layers[0].linear_attn
    with torch.no_grad():
        stock.norm.weight.copy_(torch.linspace(0.5, 1.5, stock.norm.weight.numel()))  # weights off 1.0: rounding shows
    hidden = torch.randn(2, 32, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        expected = stock(hidden)
        same = ragged_copy(adapter, stock, adapter.ragged_layer_options())(hidden)
        qwen_norm = ragged_copy(adapter, stock, {})(hidden)
    assert torch.equal(same, expected)
    assert not torch.equal(qwen_norm, expected)  # the option is what makes them equal


def test_pruned_checkpoints_keep_the_fused_in_proj(tmp_path, load_tiny_checkpoint):
    from _pruning_reference import PLANS

    from hf_rankprune.arch import model_geometry
    from hf_rankprune.plan import PrunePlan
    from hf_rankprune.surgery import apply_plan, save_pruned

    model = load_tiny_checkpoint("lara_mini")
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    save_pruned(model, tmp_path / "pruned")
    with safe_open(tmp_path / "pruned" / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
        shapes = {key: handle.get_slice(key).get_shape() for key in keys if key.endswith("linear_attn.in_proj.weight")}
    assert not any("linear_attn.in_proj_" in key or "linear_attn.norm." in key for key in keys)  # fused, out_norm
    assert any("linear_attn.out_norm." in key for key in keys)
    for layer_plan in PrunePlan.from_json_file(tmp_path / "pruned" / "prune_plan.json").layers:
        nk, nv = layer_plan.num_kept_key_heads, layer_plan.num_kept_value_heads
        rows = 2 * nk * 16 + nv * 16 + nv * 16 + 2 * nv  # [q | k | v | z | b | a]
        assert shapes[f"model.layers.{layer_plan.layer}.linear_attn.in_proj.weight"] == [rows, 64]
