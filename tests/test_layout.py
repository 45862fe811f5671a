"""The stock layout from the command line and recipes: a servable checkpoint for any plan with one count per layer."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import save_tiny_model

from hf_rankprune.cli import main

SMALL = ["--num-samples", "2", "--seq-len", "64", "--quiet"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return save_tiny_model("qwen3_next", tmp_path_factory.mktemp("layout") / "model")


def test_per_layer_stock_layout_writes_a_stock_config(source, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", str(source), *SMALL, "--budget", "per_layer", "--layout", "stock", "--ratio", "0.4",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    plan = config["rankprune_plan"]
    assert config["model_type"] == "qwen3_next" and "auto_map" not in config and plan["is_uniform"]
    kept = {len(layer["kept_value_heads"]) for layer in plan["layers"]}
    assert kept == {config["linear_num_value_heads"]} == {8 - round(0.4 * 24) // 3}
    assert config["linear_num_value_heads"] % config["linear_num_key_heads"] == 0
    replicas = sum(len(la["kept_key_heads"]) - len(set(la["kept_key_heads"])) for la in plan["layers"])
    assert plan["settings"]["layout"] == "stock" and plan["settings"]["replicated_key_heads"] == replicas
    assert "stock layout" in printed and "bf16 state" in printed
    if replicas:
        assert "key heads replicated" in printed and "q/k projection weights" in printed
    card = (out / "README.md").read_text()
    assert "| pruned | bfloat16 |" in card and "load this checkpoint as it is" in card


def test_stock_layout_of_a_plan_with_different_counts_is_refused(source, tmp_path, capsys):
    """A protected layer keeps all its heads, so layers differ: no stock config describes that; nothing written."""
    out = tmp_path / "out"
    flags = ["--budget", "per_layer", "--layout", "stock", "--protected-layers", "0"]
    code = main(["prune", str(source), *SMALL, *flags, "--out", str(out)])
    assert code == 2 and "--budget per_layer" in capsys.readouterr().err
    assert not out.exists()


def test_recipes_take_the_layout(source, tmp_path):
    recipe = {
        "calibration": {"num_samples": 2, "seq_len": 64},
        "pruning_stage": {"pruning_modifiers": {"RankPruningModifier": {
            "budget": "per_layer", "layout": "stock", "ratio": 0.25}}},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["prune", str(source), "--recipe", str(path), "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_next"
