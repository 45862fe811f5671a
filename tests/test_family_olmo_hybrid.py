"""What is Olmo-Hybrid's own: the q/k/v conv pieces of saved checkpoints are sized per layer (transformers' reverse
conversion splits them equally), and ragged layers reproduce the stock layer's beta x2 and norm eps 1e-5 exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from _pruning_reference import PLANS, assert_same_outputs
from conftest import build_tiny_model
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    OlmoHybridConfig,
    OlmoHybridForCausalLM,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)
from transformers.core_model_loading import Concatenate, WeightConverter
from transformers.models.olmo_hybrid import modeling_olmo_hybrid

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.arch.olmo_hybrid import CONV_TARGET, ConcatenateConv
from hf_rankprune.modeling import LAYER_OPTIONS_KEY, RankPrunedGatedDeltaNet, modeling_rankpruned
from hf_rankprune.plan import PrunePlan
from hf_rankprune.recipe import RecipeError, check_architecture, load_recipe
from hf_rankprune.scoring import plan_from_stats
from hf_rankprune.stats import METRICS, CategoryAccumulator, RankStats
from hf_rankprune.surgery import apply_plan, save_pruned

FAMILY = "olmo_hybrid"
DK, DV = 16, 24  # tests/families/olmo_hybrid.py: value heads wider than key heads


def _on_disk(folder) -> dict[str, tuple[int, ...]]:
    """{key: shape} of every conv tensor in the checkpoint's safetensors files."""
    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as file:
            shapes.update({key: tuple(file.get_slice(key).get_shape()) for key in file.keys() if "conv1d" in key})
    return shapes


def _expected_conv(plan) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for layer in plan.layers:
        prefix = f"model.layers.{layer.layer}.linear_attn."
        keys, values = layer.num_kept_key_heads * DK, layer.num_kept_value_heads * DV
        shapes |= {prefix + "q_conv1d.weight": (keys, 1, 4), prefix + "k_conv1d.weight": (keys, 1, 4)}
        shapes[prefix + "v_conv1d.weight"] = (values, 1, 4)
    return shapes


def _conv_converters(model) -> list:
    return [t for t in model._weight_conversions if isinstance(t, WeightConverter) and t.target_patterns == [CONV_TARGET]]


def test_source_checkpoint_conv_pieces(tmp_path):
    build_tiny_model(FAMILY).save_pretrained(tmp_path)  # an in-memory model: the registered mapping is reversed
    pieces = {"q_conv1d": (2 * DK, 1, 4), "k_conv1d": (2 * DK, 1, 4), "v_conv1d": (8 * DV, 1, 4)}  # not 3 x 256/3
    expected = {f"model.layers.{i}.linear_attn.{name}.weight": shape for i in (0, 1, 3) for name, shape in pieces.items()}
    assert _on_disk(tmp_path) == expected


@pytest.mark.parametrize("kind", ["uniform", "uniform_key_drop", "global", "ragged_groups", "equal_counts_odd"])
def test_saved_pruned_checkpoint_conv_pieces_are_sized_per_layer(kind, tmp_path, load_tiny_checkpoint):
    model = load_tiny_checkpoint(FAMILY)
    assert [type(op) for t in _conv_converters(model) for op in t.operations] == [ConcatenateConv]
    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS[kind])
    apply_plan(model, plan)
    folder = save_pruned(model, tmp_path / kind)
    shapes = _on_disk(folder)
    assert shapes == _expected_conv(plan), shapes  # q, k, v pieces only: no fused conv1d on disk
    if kind == "global":  # layer 3 keeps 1 key head and 1 value head
        assert shapes["model.layers.3.linear_attn.v_conv1d.weight"] == (24, 1, 4)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    state, saved = reloaded.state_dict(), model.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[name], saved[name]) for name in saved)


def test_model_loaded_with_transformers_conversion_is_corrected(tmp_path, load_tiny_checkpoint):
    """A model loaded before hf_rankprune was imported carries transformers' conversion (equal 3-way split at save):
    `save_pruned` gives it the per-layer split before writing (`prepare_save`)."""
    model = load_tiny_checkpoint(FAMILY)
    (converter,) = _conv_converters(model)
    converter.operations = [Concatenate(dim=0)]  # what transformers' own olmo_hybrid mapping has
    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"])
    apply_plan(model, plan)
    assert _on_disk(save_pruned(model, tmp_path / "pruned")) == _expected_conv(plan)
    assert [type(op) for op in converter.operations] == [ConcatenateConv]


def _zeroed(model, kept):
    """The original with removed value heads zeroed in o_proj's input columns."""
    reference = copy.deepcopy(model)
    for index, layer in enumerate(reference.model.layers):
        if index in kept:
            attn = layer.linear_attn
            columns = attn.o_proj.weight.view(-1, attn.num_v_heads, attn.head_v_dim)
            removed = [head for head in range(attn.num_v_heads) if head not in kept[index]]
            with torch.no_grad():
                columns[:, removed] = 0
    return reference


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_pruned_model_equals_zeroed_original(kind):
    model = build_tiny_model(FAMILY)
    reference = _zeroed(model, PLANS[kind])
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS[kind]))
    assert_same_outputs(model, reference)
    ragged = any(isinstance(module, RankPrunedGatedDeltaNet) for module in model.modules())
    assert ragged == (model.config.model_type == "olmo_hybrid_rankpruned")


def _layer_pair(allow_neg_eigval: bool, options: dict | None = None):
    """(stock layer 0 of a tiny model, a ragged layer holding its weights, built with `options` or the adapter's)."""
    model = build_tiny_model(FAMILY, linear_allow_neg_eigval=allow_neg_eigval)
    adapter = get_adapter(model)
    stock = adapter.linear_layers()[0].module
    weights = adapter.canonical_weights(stock, dict(stock.state_dict()))
    setattr(adapter.config, LAYER_OPTIONS_KEY, adapter.ragged_layer_options() if options is None else options)
    ragged = adapter.build_ragged_layer(0, 2, 8, weights["value_to_key"].tolist())
    ragged.load_state_dict(adapter.ragged_state(weights))
    return stock.eval(), ragged.eval()


def _max_diff(stock, ragged) -> float:
    hidden = torch.randn(2, 70, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (ragged(hidden) - stock(hidden)).abs().max().item()


@pytest.fixture
def stock_kernel_in_ragged_layers(monkeypatch):
    """Ragged layers call transformers' olmo_hybrid chunk kernel (consecutive groups), so both layers run the same
    arithmetic and any difference comes from the layer options."""
    kernel = modeling_olmo_hybrid.torch_chunk_gated_delta_rule
    kernel = getattr(kernel, "__wrapped__", kernel)

    def stock_kernel(q, k, v, g, beta, value_to_key=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, **kwargs):  # fmt: skip
        return kernel(q, k, v, g=g, beta=beta, initial_state=initial_state, output_final_state=output_final_state,
                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)  # fmt: skip

    monkeypatch.setattr(modeling_rankpruned, "chunk_gated_delta_rule", stock_kernel)


@pytest.mark.parametrize("allow_neg_eigval", [True, False])
def test_ragged_layer_reproduces_beta_scale_and_norm_eps_exactly(allow_neg_eigval, stock_kernel_in_ragged_layers):
    stock, ragged = _layer_pair(allow_neg_eigval)
    assert ragged.beta_scale == (2.0 if allow_neg_eigval else 1.0)
    assert ragged.norm.variance_epsilon == stock.o_norm.variance_epsilon == 1e-5 != stock.eps  # rms_norm_eps 1e-6
    assert _max_diff(stock, ragged) == 0.0


def test_each_option_changes_the_output(stock_kernel_in_ragged_layers):
    options = get_adapter(build_tiny_model(FAMILY)).ragged_layer_options()
    assert options == {"gate_activation": "silu", "beta_scale": 2.0, "norm_eps": 1e-5, "norm_weight_in_fp32": False}
    for change in ({"beta_scale": 1.0}, {"norm_eps": None}):  # None: the config's rms_norm_eps, 1e-6
        assert _max_diff(*_layer_pair(True, {**options, **change})) > 1e-3, change


def test_ragged_layer_with_the_package_kernel():
    assert _max_diff(*_layer_pair(True)) <= 1e-6  # the torch reference kernel agrees to fp32 round-off


def test_options_come_from_the_stock_code_when_every_layer_is_ragged():
    model = build_tiny_model(FAMILY)
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["ragged_groups"]))  # every layer ragged
    adapter = get_adapter(model)
    assert not any(isinstance(module, adapter.stock_layer_classes()) for module in model.modules())
    assert adapter.ragged_layer_options()["norm_eps"] == 1e-5 and adapter.config.rms_norm_eps == 1e-6
    assert getattr(model.config, LAYER_OPTIONS_KEY)["beta_scale"] == 2.0


def test_recipe_makes_a_stock_uniform_plan_on_the_default_geometry():
    """recipes/olmo_hybrid.yaml on OlmoHybridConfig's defaults (24 linear layers x 30 heads, one value head per key
    head): 12 heads of every layer go, key heads with them, 40% of the state."""
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "olmo_hybrid.yaml")
    with torch.device("meta"):
        model = OlmoHybridForCausalLM(OlmoHybridConfig())
        other = Qwen3NextForCausalLM(Qwen3NextConfig(num_hidden_layers=4, num_experts=4))
    check_architecture(recipe, model)
    layers = get_adapter(model).linear_layers()
    stats = RankStats([la.index for la in layers], [la.num_value_heads for la in layers],
                      [la.rank_cap for la in layers], [64, 128], settings={"rank_eps": 1e-4})  # fmt: skip
    accumulator = CategoryAccumulator.empty(stats.num_heads, 2)
    accumulator.counts[:] = 1
    rng = np.random.default_rng(0)
    for position, layer in enumerate(layers):
        ranks, norms = rng.integers(0, layer.rank_cap + 1, 30).astype(float), rng.uniform(1, 10, 30)
        for metric in METRICS:
            accumulator.sums[metric][position][:] = (norms if metric == "nuclear_norm" else ranks)[:, None]
    stats.categories["default"] = accumulator
    plan = plan_from_stats(model, stats, recipe.config)
    assert plan.is_uniform and len(plan.layers) == 24
    assert plan.settings["total_value_heads"] == 720 and plan.settings["removed_value_heads"] == 288
    assert all(la.num_kept_value_heads == 18 and la.num_kept_key_heads == 18 for la in plan.layers)
    assert plan.memory(context_length=recipe.config.seq_len).state_reduction == pytest.approx(0.4)
    with pytest.raises(RecipeError, match="another architecture"):
        check_architecture(recipe, other)
