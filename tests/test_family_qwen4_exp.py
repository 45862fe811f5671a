"""Qwen4-Exp specifics: the memory formula counts the indexed-attention caches (K/V and the QSA indexer's keys) and the
linear layers' states as the real cache holds them, before and after pruning; the ragged layer takes the family's
gated-norm activation (`output_gate_type`), and that option changes the outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from _pruning_reference import PLANS, assert_same_outputs, decoder_layers, prefill_logits, zeroed_reference
from conftest import build_tiny_model

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.modeling import LAYER_OPTIONS_KEY, RankPrunedGatedDeltaNet
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan

BATCH, TOKENS = 2, 37


def cache_bytes(model) -> dict[str, int]:
    """Bytes the model's DynamicCache holds after a cached prefill of BATCH x TOKENS tokens, by kind."""
    ids = torch.randint(1, 300, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    totals = {"state": 0, "conv": 0, "kv": 0, "indexer_positions": 0}
    for layer in cache.layers:
        if hasattr(layer, "recurrent_states"):
            totals["state"] += layer.recurrent_states[0].nbytes
            totals["conv"] += layer.conv_states[0].nbytes
        else:
            totals["kv"] += layer.keys.nbytes + layer.values.nbytes + layer.indexer_keys.nbytes
            if layer.indexer_position_ids is not None:
                totals["indexer_positions"] += layer.indexer_position_ids.nbytes
    return totals


@pytest.mark.parametrize("vision", [False, True])
def test_memory_formula_matches_the_real_cache(vision):
    model = build_tiny_model("qwen4_exp", vision=vision)
    info = get_adapter(model).model_info()
    config = model.config.get_text_config()
    indexed, positions = info["attention_caches"]
    per_token = 2 * config.num_key_value_heads * config.head_dim + config.indexer_kv_heads * config.indexer_head_dim
    assert indexed == {"kind": "indexed_attention", "layers": [2], "elements_per_token": per_token, "window": None}
    assert positions["elements_per_token"] == 3 and positions["dtype"] == "int64"

    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"])
    memory = plan.memory(context_length=TOKENS, batch_size=BATCH, state_dtype="float32")
    before = cache_bytes(model)
    assert memory.kv_cache_bytes == before["kv"] + before["indexer_positions"]
    assert memory.state_bytes_before == before["state"] and memory.conv_bytes_before == before["conv"]
    # the indexers' shared 3-D position ids (int64), kept once per model on the first indexed layer
    assert before["indexer_positions"] == 3 * BATCH * TOKENS * 8

    apply_plan(model, plan)
    after = cache_bytes(model)
    assert memory.state_bytes_after == after["state"] and memory.conv_bytes_after == after["conv"]
    assert after["kv"] == before["kv"]


def test_ragged_layers_take_the_output_gate_activation():
    model = build_tiny_model("qwen4_exp")
    assert model.config.output_gate_type == "sigmoid" and model.config.hidden_act == "silu"
    reference = zeroed_reference(model, PLANS["ragged_groups"])
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["ragged_groups"]))
    assert getattr(model.config, LAYER_OPTIONS_KEY) == {"gate_activation": "sigmoid"}
    ragged = [layer.linear_attn for layer in decoder_layers(model) if hasattr(layer, "linear_attn")]
    assert all(isinstance(attn, RankPrunedGatedDeltaNet) and attn.norm.activation == "sigmoid" for attn in ragged)

    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(0))
    expected = prefill_logits(reference, ids)
    assert (prefill_logits(model, ids) - expected).abs().max() <= 1e-5
    silu = copy.deepcopy(model)  # the option matters: the defaults' silu gate gives other outputs
    for attn in decoder_layers(silu):
        if hasattr(attn, "linear_attn"):
            attn.linear_attn.norm.activation = "silu"
    assert (prefill_logits(silu, ids) - expected).abs().max() > 1e-3


def test_pruning_a_model_with_ple_layers():
    """PLE n-gram layers keep their own conv states (1 and 2) in the linear layers' caches: a ragged plan still equals
    the zeroed original, prefill and cached decoding."""
    model = build_tiny_model(
        "qwen4_exp", ple_layer_ids=[1, 4], ngram_vocab_size_base=97, heads_per_ngram=2, ple_embed_dim=16
    )
    with torch.no_grad():  # the PLE convolution starts at zero: give it weights so it takes part
        for name, param in model.named_parameters():
            if "ple.conv1d" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    reference = zeroed_reference(model, PLANS["global"])
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    assert isinstance(decoder_layers(model)[0].linear_attn, RankPrunedGatedDeltaNet)
    assert_same_outputs(model, reference)


def test_output_gate_type_unset_falls_back_to_hidden_act():
    model = build_tiny_model("qwen4_exp", output_gate_type=None)
    assert get_adapter(model).ragged_layer_options() == {"gate_activation": "silu"}


def test_recipe_makes_a_stock_uniform_plan_on_the_default_geometry():
    from pathlib import Path

    from test_recipe import on_meta, synthetic_stats
    from transformers import Qwen4ExpForCausalLM, Qwen4ExpTextConfig

    from hf_rankprune.recipe import check_architecture, load_recipe
    from hf_rankprune.scoring import plan_from_stats

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "qwen4_exp.yaml")
    # transformers' defaults, with the QSA indexer fields the defaults leave unset (a model cannot be built without)
    config = Qwen4ExpTextConfig(
        indexer_n_heads=16, indexer_kv_heads=1, indexer_head_dim=256, indexer_budget=2048, indexer_compress_ratio=4
    )
    model = on_meta(Qwen4ExpForCausalLM, config)
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    assert plan.is_uniform and len(plan.layers) == 30
    assert plan.settings["total_value_heads"] == 960 and plan.settings["removed_value_heads"] == 480
    assert all(la.num_kept_value_heads == 16 and la.num_kept_key_heads == 16 for la in plan.layers)
    memory = plan.memory(context_length=recipe.config.seq_len, state_dtype="float32")
    assert memory.state_reduction == pytest.approx(0.5)
    # 10 indexed layers: K/V (2 x 2 kv heads x 256) and the indexer's key (256) per token, in the model dtype; and
    # the indexers' position ids (3 int64 per token, once)
    assert memory.kv_cache_bytes == 10 * (2 * 2 * 256 + 256) * 2048 * 4 + 3 * 2048 * 8


@pytest.mark.parametrize("pruned", [False, True], ids=["original", "ragged"])
def test_memory_counts_the_ple_states(pruned):
    """PLE layers' conv states 1 and 2 (a dilated convolution in the model dtype, the last token ids in int64) are in
    the formula: every layer's figure equals the bytes of the real cache, before and after pruning."""
    from test_memory import real_cache_bytes

    from hf_rankprune.memory import model_memory_layers

    model = build_tiny_model(
        "qwen4_exp", ple_layer_ids=[1, 4], ngram_vocab_size_base=97, heads_per_ngram=2, ple_embed_dim=16
    )
    if pruned:
        apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    rows = model_memory_layers(get_adapter(model).geometry(), TOKENS)
    predicted: dict[int, int] = {}
    for row in rows:
        total = row["state_bytes"] + row["conv_bytes"] + row["cache_bytes"] + row["fixed_bytes"]
        predicted[row["layer"]] = predicted.get(row["layer"], 0) + total
    real = {index: size for index, size in real_cache_bytes(model, TOKENS).items() if size}
    assert predicted == real
    assert {row["layer"] for row in rows if row["fixed_bytes"]} == {0, 3}  # one-indexed ple_layer_ids 1 and 4
