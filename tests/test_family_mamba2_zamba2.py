"""Mamba2 and Zamba2: SSD families whose config derives the mixer width from `hidden_size * expand`, so it cannot
state fewer heads and every pruned checkpoint, uniform plans included, is the `*_rankpruned` type. Zamba2 has a mixer
in every layer, at `mamba` or (hybrid layers, after the shared transformer block) at `mamba_decoder.mamba`; the
ragged model class finds either when it rebuilds pruned layers from the plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _pruning_reference import PLANS, assert_same_outputs, prefill_logits, zeroed_reference
from conftest import build_tiny_model
from test_recipe import on_meta, synthetic_stats
from transformers import AutoModelForCausalLM

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan, model_plan, save_pruned

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["mamba2", "zamba2"]
# PLANS["uniform"] with layer 2 (a mixer too in these families) pruned alike: 2 heads of each group everywhere
UNIFORM = {**PLANS["uniform"], 2: [1, 2, 5, 6]}
# zamba2: the hybrid layer's mixer (layer 2) pruned with unequal groups, beside a linear_attention layer
HYBRID = {1: [0, 1, 2, 5], 2: [0, 4, 5, 6]}
IDS = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(3))


def prune(model, kept):
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), kept))
    return model


def assert_reloads_bit_equal(model, folder: Path):
    """The checkpoint loads in this process (hf_rankprune imported) as the same class, weights and logits."""
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(loaded) is type(model)
    reference = model.state_dict()
    state = loaded.state_dict()
    assert state.keys() == reference.keys()
    for key, value in state.items():
        assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key
    assert torch.equal(prefill_logits(loaded, IDS), prefill_logits(model, IDS))
    return loaded


@pytest.mark.parametrize("family", FAMILIES)
def test_a_uniform_plan_is_the_rankpruned_type_and_reloads_equal_to_the_masked_reference(family, tmp_path):
    model = build_tiny_model(family)
    stock_type = model.config.model_type
    assert get_adapter(model).model_info()["stock_uniform"] is False
    plan = PrunePlan.from_kept_heads(model_geometry(model), UNIFORM)
    assert plan.is_uniform and not plan.loads_in_stock
    reference = zeroed_reference(model, UNIFORM)  # the removed heads masked inside the mixers
    apply_plan(model, plan)
    assert model.config.model_type == stock_type + "_rankpruned"
    assert model_plan(model).is_uniform
    ragged = get_adapter(model).ragged_layer_class()
    mixers = get_adapter(model).linear_layers()
    assert [layer.index for layer in mixers] == [0, 1, 2, 3]
    assert all(isinstance(layer.module, ragged) and layer.num_value_heads == 4 for layer in mixers)
    value_key, key_key = get_adapter(model).head_count_keys  # the config keeps the stock counts
    assert (getattr(model.config, value_key), getattr(model.config, key_key)) == (8, 2)
    assert_same_outputs(model, reference)

    folder = save_pruned(model, tmp_path / "pruned")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == stock_type + "_rankpruned" and "auto_map" in config
    loaded = assert_reloads_bit_equal(model, folder)
    assert_same_outputs(loaded, reference)


REMOTE = textwrap.dedent(
    """
    import sys
    sys.modules["hf_rankprune"] = None  # make `import hf_rankprune` fail, even if it is installed
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, trust_remote_code=True)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.save(model(ids).logits, sys.argv[2])
    print("RESULT", type(model).__module__, type(model).__name__, type(model.model.layers[2].mamba_decoder.mamba).__name__)
    """
)


def test_zamba2_prunes_the_mixer_of_a_hybrid_layer(tmp_path):
    model = build_tiny_model("zamba2")
    assert model.config.layers_block_type[2] == "hybrid"
    reference = zeroed_reference(model, HYBRID)
    prune(model, HYBRID)
    hybrid_mixer = model.model.layers[2].mamba_decoder.mamba
    assert hybrid_mixer.num_heads == 4 and hybrid_mixer.value_to_key.tolist() == [0, 1, 1, 1]
    assert model.model.layers[1].mamba.num_heads == 4 and model.model.layers[3].mamba.num_heads == 8
    assert_same_outputs(model, reference)

    folder = save_pruned(model, tmp_path / "pruned")
    loaded = assert_reloads_bit_equal(model, folder)  # the ragged class rebuilds layer 2 at mamba_decoder.mamba
    assert loaded.model.layers[2].mamba_decoder.mamba.value_to_key.tolist() == [0, 1, 1, 1]

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    out = tmp_path / "remote.pt"
    result = subprocess.run([sys.executable, "-c", REMOTE, str(folder), str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    module, _, layer = next(line for line in result.stdout.splitlines() if line.startswith("RESULT")).split()[1:]
    assert module.startswith("transformers_modules") and layer == "RankPrunedZamba2MambaMixer"
    assert torch.equal(torch.load(out), prefill_logits(model, IDS))


def test_memory_geometry_names_the_attention_caches():
    assert get_adapter(build_tiny_model("mamba2")).model_info()["attention_caches"] == []
    caches = get_adapter(build_tiny_model("zamba2")).model_info()["attention_caches"]
    # the shared block attends over [hidden | embeddings]: 2 kv heads of 2 * 64 / 4 = 32 channels, keys and values
    assert caches == [{"kind": "hybrid", "layers": [2], "elements_per_token": 2 * 2 * 32, "window": None}]


@pytest.mark.parametrize("family", FAMILIES)
def test_recipe_makes_a_uniform_rankpruned_plan_on_the_default_geometry(family):
    from transformers import Mamba2Config, Mamba2ForCausalLM, Zamba2Config, Zamba2ForCausalLM

    from hf_rankprune.recipe import check_architecture, load_recipe
    from hf_rankprune.scoring import plan_from_stats

    recipe = load_recipe(REPO / "recipes" / f"{family}.yaml")
    if family == "mamba2":  # 128 heads of dim 64 in 8 groups, 64 layers: 8 groups of 12 kept
        model, heads, groups = on_meta(Mamba2ForCausalLM, Mamba2Config()), 128, [12] * 8
    else:  # 8 heads of dim 640 in 1 group, 54 layers (9 hybrid): 6 of 8 kept
        model, heads, groups = on_meta(Zamba2ForCausalLM, Zamba2Config()), 8, [6]
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    assert len(plan.layers) == model.config.num_hidden_layers  # a mixer in every layer
    assert plan.is_uniform and not plan.loads_in_stock  # uniform, yet the *_rankpruned type
    assert all(la.group_sizes() == groups for la in plan.layers)
    assert plan.settings["removed_value_heads"] == heads // 4 * len(plan.layers)
    assert plan.memory(context_length=2048, state_dtype="float32").state_reduction == pytest.approx(0.25)
