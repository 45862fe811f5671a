"""Recipes: grammar, validation errors, the shipped recipes on the real target geometries, and every entry point
(RankPruner.from_recipe, `hf-rankprune prune --recipe`, apply_recipe, RankPruneCallback in a Trainer run)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import build_tiny_model, build_tiny_tokenizer
from transformers import (
    AutoModelForCausalLM,
    Qwen3_5ForCausalLM,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)

import hf_rankprune  # noqa: F401  (registers the pruned model types)
from hf_rankprune.arch import get_adapter
from hf_rankprune.cli import main
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.plan import PrunePlan
from hf_rankprune.pruner import RankPruner
from hf_rankprune.recipe import Recipe, RecipeError, check_architecture, load_recipe
from hf_rankprune.scoring import plan_from_stats
from hf_rankprune.stats import METRICS, CategoryAccumulator, RankStats
from hf_rankprune.training import RankPruneCallback, apply_recipe, retarget_optimizer

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
MOD = "pruning_stage.pruning_modifiers.RankPruningModifier"


def recipe_text(modifier: str = "ratio: 0.25", top: str = "") -> str:
    kwargs = "".join(f"      {line}\n" for line in modifier.splitlines()) if modifier else ""
    return f"{top}pruning_stage:\n  pruning_modifiers:\n    RankPruningModifier:\n{kwargs}"


def synthetic_stats(model, seed: int = 0) -> RankStats:
    """RankStats for `model` with random per-head ranks and nuclear norms (no forward pass: works on meta)."""
    rng = np.random.default_rng(seed)
    layers = get_adapter(model).linear_layers()
    stats = RankStats([la.index for la in layers], [la.num_value_heads for la in layers],
                      [la.rank_cap for la in layers], [64, 128], settings={"rank_eps": 1e-4})  # fmt: skip
    accumulator = CategoryAccumulator.empty(stats.num_heads, 2)
    accumulator.counts[:] = 1
    for p, la in enumerate(layers):
        ranks = rng.integers(0, la.rank_cap + 1, la.num_value_heads).astype(float)
        norms = rng.uniform(1, 10, la.num_value_heads)
        for metric in METRICS:
            accumulator.sums[metric][p][:] = (norms if metric == "nuclear_norm" else ranks)[:, None]
    stats.categories["default"] = accumulator
    return stats


def on_meta(cls, config):
    with torch.device("meta"):
        return cls(config)


QWEN3_NEXT_80B = dict(
    vocab_size=151936, hidden_size=2048, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2,
    head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
    linear_value_head_dim=128, num_experts=512, num_experts_per_tok=10, moe_intermediate_size=512,
    shared_expert_intermediate_size=512, intermediate_size=5120, full_attention_interval=4,
)  # fmt: skip


# -- the shipped recipes ---------------------------------------------------------------------------------------
def test_every_recipe_is_shipped():
    names = {p.name for p in RECIPES}
    assert {"demo.yaml", "qwen3_next_80b_a3b_instruct.yaml", "qwen3_next_80b_a3b_thinking.yaml",
            "qwen3_5_dense_uniform.yaml", "qwen3_5_moe_uniform.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_loads_and_round_trips(path, tmp_path):
    recipe = load_recipe(path)
    assert recipe.source == str(path) and recipe.architecture
    assert recipe.config.rank_eps == 1e-4 and recipe.config.norm == "nuclear" and recipe.config.alpha == 0.5
    assert recipe.config.direction == "saturated" and recipe.config.score == "joint"
    assert load_recipe(recipe.to_yaml()) == recipe
    assert load_recipe(recipe.to_dict()) == recipe
    assert load_recipe(recipe.save(tmp_path / "copy.yaml")) == recipe
    assert yaml.safe_load(recipe.to_yaml())["pruning_stage"]["pruning_modifiers"]["RankPruningModifier"]


def test_exponents_without_a_decimal_point_are_numbers():
    """PyYAML (YAML 1.1) reads `1e-4` as a string; a recipe reads it as the number its writer meant."""
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"
    recipe = load_recipe(recipe_text("rank_eps: 1e-3\nratio: 25E-2\nalpha: .5e0\nstart_step: 10"))
    assert recipe.config.rank_eps == 1e-3 and recipe.config.ratio == 0.25 and recipe.config.alpha == 0.5
    assert recipe.start_step == 10 and isinstance(recipe.start_step, int)
    assert load_recipe(recipe_text(top="description: 1e-4 heads\n")).description == "1e-4 heads"
    with pytest.raises(RecipeError, match=r"ratio=1.5 is not allowed"):
        load_recipe(recipe_text("ratio: 15e-1"))


@pytest.mark.parametrize("name", ["qwen3_next_80b_a3b_instruct", "qwen3_next_80b_a3b_thinking"])
def test_paper_recipes_remove_448_of_1152_heads_on_qwen3_next_80b(name):
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert recipe.model.startswith("Qwen/Qwen3-Next-80B-A3B-") and recipe.config.budget == "global"
    model = on_meta(Qwen3NextForCausalLM, Qwen3NextConfig(**QWEN3_NEXT_80B))
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    assert plan.settings["total_value_heads"] == 1152 and plan.settings["removed_value_heads"] == 448
    memory = plan.memory(context_length=recipe.config.seq_len, state_dtype="float32")
    assert memory.state_bytes_before == 1152 * 128 * 128 * 4
    assert memory.state_bytes_before - memory.state_bytes_after == 448 * 128 * 128 * 4
    assert round(memory.state_reduction, 3) == 0.389
    with pytest.raises(RecipeError, match="another architecture"):
        check_architecture(load_recipe(REPO / "recipes" / "qwen3_5_dense_uniform.yaml"), model)


@pytest.mark.parametrize(
    "name, cls, config, linear_layers",
    [
        ("qwen3_5_dense_uniform", Qwen3_5ForCausalLM, Qwen3_5TextConfig, 24),  # 9B-style defaults: 32 layers
        ("qwen3_5_moe_uniform", Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, 30),  # 35B-A3B defaults: 40 layers
    ],
)
def test_qwen3_5_recipes_make_stock_uniform_plans(name, cls, config, linear_layers):
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    model = on_meta(cls, config())
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    assert plan.is_uniform and len(plan.layers) == linear_layers
    assert plan.settings["total_value_heads"] == 32 * linear_layers
    assert plan.settings["removed_value_heads"] == 16 * linear_layers
    assert all(la.num_kept_value_heads == 16 and la.num_kept_key_heads == 16 for la in plan.layers)
    assert all(la.group_sizes() == [1] * 16 for la in plan.layers)
    memory = plan.memory(context_length=recipe.config.seq_len)
    assert memory.state_reduction == pytest.approx(0.5)
    with pytest.raises(RecipeError, match="another architecture"):
        check_architecture(recipe, on_meta(Qwen3NextForCausalLM, Qwen3NextConfig(**QWEN3_NEXT_80B)))


def test_demo_recipe_on_the_demo_model_geometry(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_demo_model", REPO / "scripts" / "train_demo_model.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # its dataclasses look their module up there
    spec.loader.exec_module(script)
    with torch.device("meta"):
        model = script.build_model(320, 0)
    recipe = load_recipe(REPO / "recipes" / "demo.yaml")
    assert recipe.model is None and recipe.start_step == 3
    assert (recipe.config.num_samples, recipe.config.seq_len) == (16, 512)
    check_architecture(recipe, model)
    plan = plan_from_stats(model, synthetic_stats(model), recipe.config)
    assert plan.settings["total_value_heads"] == 32 and plan.settings["removed_value_heads"] == 12
    assert plan.memory(context_length=512).state_reduction == pytest.approx(12 / 32)


# -- grammar and errors ----------------------------------------------------------------------------------------
def test_grammar_defaults_and_budget_fields():
    recipe = load_recipe(recipe_text("num_heads: 5\nstart_step: 2", "model: org/name\n"))
    assert isinstance(recipe, Recipe) and recipe.source == "<recipe>"
    assert recipe.config.num_heads == 5 and recipe.config.ratio is None and recipe.config.budget_kind() == "num_heads"
    assert recipe.start_step == 2 and recipe.model == "org/name" and recipe.architecture is None
    assert recipe.config.num_samples == RankPruneConfig().num_samples
    empty = load_recipe("my_stage:\n  my_modifiers:\n    RankPruningModifier:\n")
    assert empty.config == RankPruneConfig() and (empty.stage, empty.modifiers_group) == ("my_stage", "my_modifiers")
    assert "my_stage:" in empty.to_yaml()
    full = load_recipe(recipe_text("ratio: 0.5", "architecture: qwen3_5_text\ncalibration: {num_samples: 2, "
                                   "seq_len: 128, data: builtin:math}\nevaluation: {tasks: [memory]}\noutput_dir: o\n"
                                   "push_to_hub: {repo_id: me/x, private: true}\n"))  # fmt: skip
    assert full.architecture == ["qwen3_5_text"] and full.config.data == ["builtin:math"]
    assert full.evaluation == {"tasks": ["memory"]} and full.push_to_hub == {"repo_id": "me/x", "private": True}
    assert full.replace(ratio=None, num_heads=3).config.budget_kind() == "num_heads"
    assert full.replace(num_heads=3).config.ratio is None  # one budget field clears the others
    assert load_recipe(full.to_yaml()) == full


BAD = [
    # unknown keys, at each level
    ("modle: x\n" + recipe_text(), "unknown key modle"),
    (recipe_text(top="calibration: {num_sample: 2}\n"), "unknown key calibration.num_sample"),
    (recipe_text("ratios: 0.3"), f"unknown key {MOD}.ratios"),
    (recipe_text("num_samples: 2"), "put it under calibration"),
    (recipe_text() + "    GPTQModifier: {}\n", "unknown modifier pruning_stage.pruning_modifiers.GPTQModifier"),
    ("pruning_stage:\n  pruning_modifiers:\n    SparseGPTModifier: {}\n", "unknown modifier"),
    (recipe_text() + "other_stage:\n  x_modifiers:\n    RankPruningModifier: {}\n", "found 2 stages"),
    ("model: x\n", "found 0 stages"),
    ("pruning_stage:\n  pruning_group:\n    RankPruningModifier: {}\n", "exactly one '<name>_modifiers'"),
    ("pruning_stage:\n  pruning_modifiers: {}\n", "is empty"),
    (recipe_text(top="evaluation: {tasks: [memory], tsks: 1}\n"), "unknown key evaluation.tsks"),
    (recipe_text(top="push_to_hub: {repo_id: a/b, privat: true}\n"), "unknown key push_to_hub.privat"),
    # wrong types
    ("- a\n- b\n", "the recipe must be a mapping"),
    ("pruning_stage: 3\n", "pruning_stage must be a mapping"),
    ("pruning_stage:\n  pruning_modifiers: [RankPruningModifier]\n", "must be a mapping"),
    ("pruning_stage:\n  pruning_modifiers:\n    RankPruningModifier: [ratio]\n", f"{MOD} must be a mapping"),
    (recipe_text(top="calibration: [2, 128]\n"), "calibration must be a mapping"),
    (recipe_text("ratio: abc"), f"{MOD}.ratio='abc' is not allowed: it must be a finite number"),
    (recipe_text("ratio: true"), f"{MOD}.ratio=True is not allowed"),
    (recipe_text(top="calibration: {num_samples: 2.5}\n"), "calibration.num_samples=2.5 is not allowed"),
    (recipe_text(top="calibration: {data: 3}\n"), "calibration.data=3 is not allowed"),
    (recipe_text("protected_layers: 3"), f"{MOD}.protected_layers=3 is not allowed"),
    (recipe_text("start_step: -1"), f"{MOD}.start_step=-1 is not allowed"),
    (recipe_text("start_step: two"), "start_step='two' is not allowed"),
    (recipe_text(top="model: 5\n"), "model=5 is not allowed"),
    (recipe_text(top="output_dir: []\n"), "output_dir=[] is not allowed"),
    (recipe_text(top="architecture: 5\n"), "architecture=5 is not allowed"),
    (recipe_text(top="evaluation: [memory]\n"), "evaluation must be a mapping"),
    (recipe_text(top="evaluation: {tasks: [memory], num_keys: x}\n"), "evaluation.num_keys='x' is not allowed"),
    (recipe_text(top="push_to_hub: {repo_id: a/b, private: yes please}\n"), "push_to_hub.private="),
    (recipe_text(top="push_to_hub: me/x\n"), "push_to_hub must be a mapping"),
    # bad values
    (recipe_text("ratio: 1.5"), f"{MOD}.ratio=1.5 is not allowed: it must lie in (0.0, 1.0)"),
    (recipe_text("norm: l2"), f"{MOD}.norm='l2' is not allowed: choose one of"),
    (recipe_text("direction: up"), f"{MOD}.direction='up' is not allowed"),
    (recipe_text("alpha: 2"), f"{MOD}.alpha=2 is not allowed"),
    (recipe_text("budget: everywhere"), f"{MOD}.budget='everywhere' is not allowed"),
    (recipe_text("ratio: 0.3\nnum_heads: 4"), "give exactly one of ['ratio', 'num_heads', 'target_state_bytes']"),
    (recipe_text(top="calibration: {seq_len: 0}\n"), "calibration.seq_len=0 is not allowed: it must be an integer"),
    (recipe_text(top="architecture: [llama]\n"), "['llama'] is not a supported model_type"),
    (recipe_text(top="evaluation: {tasks: [mmlu]}\n"), "evaluation.tasks=['mmlu'] is not allowed"),
    (recipe_text(top="push_to_hub: {repo_id: noslash}\n"), "push_to_hub.repo_id='noslash' is not allowed"),
    # unreadable YAML
    ("pruning_stage: [unclosed\n", "not valid YAML"),
    ("pruning_stage:\n  pruning_modifiers:\n    RankPruningModifier: {ratio: 0.3\n", "not valid YAML"),
    ("\n# only a comment\n", "the recipe is empty"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[f"{i}:{m[:28]}" for i, (_, m) in enumerate(BAD)])
def test_bad_recipes_name_the_file_and_key(text, message, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert isinstance(error.value, ValueError)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)


def test_error_message_format_and_other_sources(tmp_path):
    path = tmp_path / "recipes" / "x.yaml"
    path.parent.mkdir()
    path.write_text(recipe_text("ratio: 1.5"))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert str(error.value) == (f"{path}: pruning_stage.pruning_modifiers.RankPruningModifier.ratio=1.5 is not "
                                "allowed: it must lie in (0.0, 1.0).")  # fmt: skip
    with pytest.raises(RecipeError, match=r"^<recipe>: .*ratio=1.5"):
        load_recipe(yaml.safe_load(recipe_text("ratio: 1.5")))
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe("recipes/missing.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RecipeError, match="binary.yaml: cannot read|binary.yaml: not valid YAML"):
        load_recipe(tmp_path / "binary.yaml")
    with pytest.raises(RecipeError, match="not int"):
        load_recipe(3)


def test_check_architecture_accepts_text_and_pruned_types():
    recipe = load_recipe(recipe_text(top="architecture: [qwen3_5_text]\n"))
    check_architecture(recipe, {"model_type": "qwen3_5_text_rankpruned"})
    check_architecture(recipe, {"model_type": "qwen3_5", "text_config": {"model_type": "qwen3_5_text"}})
    check_architecture(load_recipe(recipe_text()), {"model_type": "anything"})  # no architecture: any model
    with pytest.raises(RecipeError, match=r"model_type='qwen3_next': this recipe is for another architecture"):
        check_architecture(recipe, build_tiny_model("qwen3_next"))


# -- entry points ----------------------------------------------------------------------------------------------
def tiny_recipe(tmp_path, model_dir, modifier="num_heads: 6", extra=""):
    path = tmp_path / "tiny.yaml"
    path.write_text(recipe_text(modifier, f"model: {model_dir}\narchitecture: [qwen3_5_text]\n"
                                          f"calibration: {{num_samples: 2, seq_len: 128}}\n{extra}"))  # fmt: skip
    return path


def test_from_recipe_end_to_end(tiny_model_dir, tmp_path):
    pruner = RankPruner.from_recipe(tiny_recipe(tmp_path, tiny_model_dir))
    assert pruner.config.num_heads == 6 and pruner.config.num_samples == 2 and pruner.recipe.model
    pruner.prune()
    assert pruner.pruning_plan.settings["removed_value_heads"] == 6
    pruner.save_pretrained(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(m.num_v_heads for m in loaded.modules() if hasattr(m, "num_v_heads")) == 24 - 6
    # a model argument and overrides win over the recipe; a budget override replaces the recipe's budget
    other = RankPruner.from_recipe(tiny_recipe(tmp_path, tiny_model_dir), model=build_tiny_model("qwen3_5"),
                                   tokenizer=build_tiny_tokenizer(), ratio=0.5, budget="uniform")  # fmt: skip
    assert other.config.budget_kind() == "ratio" and other.config.num_heads is None
    assert other.plan().settings["removed_value_heads"] == 12
    with pytest.raises(RecipeError, match="another architecture"):
        RankPruner.from_recipe(tiny_recipe(tmp_path, tiny_model_dir), model=build_tiny_model("qwen3_next"))


def test_run_is_the_whole_pipeline(tiny_model_dir, tmp_path):
    """`RankPruner.from_recipe(...).run()`: measure, plan, evaluate before and after, prune, save (the CLI's path)."""
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path, tiny_model_dir, extra=f"evaluation: {{tasks: [memory]}}\noutput_dir: {out}\n")
    pruner = RankPruner.from_recipe(recipe)
    result = pruner.run(progress=False)
    assert result.folder == out and result.commit is None and result.plan.settings["removed_value_heads"] == 6
    before, after = (result.evaluation[side]["memory.linear_state_bytes"] for side in ("original", "pruned"))
    assert after == before * 18 // 24 and pruner.evaluation_results is result.evaluation
    assert "| memory.linear_state_bytes |" in (out / "README.md").read_text()  # the card shows the evaluation


def test_cli_prune_with_recipe(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "from_recipe"
    recipe = tiny_recipe(tmp_path, tiny_model_dir, extra=f"output_dir: {out}\n")
    assert main(["prune", "--recipe", str(recipe), "--quiet"]) == 0
    assert "Removed 6 of 24 value heads" in capsys.readouterr().out
    assert json.loads((out / "prune_plan.json").read_text())["settings"]["removed_value_heads"] == 6
    AutoModelForCausalLM.from_pretrained(out)
    # command-line flags override the recipe (budget and output folder)
    flagged = tmp_path / "flagged"
    code = main(["prune", "--recipe", str(recipe), "--ratio", "0.5", "--budget", "uniform", "--quiet",
                 "--out", str(flagged)])  # fmt: skip
    assert code == 0 and not (tmp_path / "unused").exists()
    assert json.loads((flagged / "config.json").read_text())["linear_num_value_heads"] == 4
    capsys.readouterr()


@pytest.mark.parametrize(
    "modifier, extra, message",
    [
        ("ratio: 1.5", "", f"{MOD}.ratio=1.5 is not allowed"),
        ("num_heads: 6", "unknown_key: 1\n", "unknown key unknown_key"),
        ("num_heads: 6", "", "No output folder"),
    ],
)
def test_cli_bad_recipe_exits_2_and_writes_nothing(tiny_model_dir, tmp_path, capsys, modifier, extra, message):
    out = tmp_path / "out"
    recipe = tiny_recipe(tmp_path, tiny_model_dir, modifier, extra)
    argv = ["prune", "--recipe", str(recipe), "--quiet"] + (["--out", str(out)] if "folder" not in message else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()


def test_cli_refuses_a_recipe_for_another_architecture(tmp_path, capsys):
    from conftest import save_tiny_model

    model_dir = save_tiny_model("qwen3_next", tmp_path / "next")
    out = tmp_path / "out"
    code = main(["prune", str(model_dir), "--recipe", str(REPO / "recipes" / "qwen3_5_dense_uniform.yaml"),
                 "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("error: ") == 1 and "another architecture" in err and not out.exists()


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_5"])
@pytest.mark.parametrize("budget", ["global", "uniform"])
def test_apply_recipe_prunes_in_place_and_the_optimizer_follows(family, budget):
    model = build_tiny_model(family).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 300, (2, 64))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # mark every first moment with its own weight: after pruning, a kept head's moment must sit where its weight went
    for param in model.parameters():
        optimizer.state[param]["exp_avg"] = param.detach().clone()
    before = {id(p) for p in model.parameters()}
    recipe = {"calibration": {"num_samples": 2, "seq_len": 64},
              "s_stage": {"s_modifiers": {"RankPruningModifier": {"num_heads": 8, "budget": budget}}}}  # fmt: skip
    plan = apply_recipe(model, recipe, data=ids, optimizer=optimizer)
    removed = plan.settings["removed_value_heads"]
    assert isinstance(plan, PrunePlan) and (removed == 8 if budget == "global" else 0 < removed <= 8)
    assert model.training  # training mode restored
    heads = sum(m.num_v_heads for m in model.modules() if hasattr(m, "num_v_heads"))
    assert heads == sum(la.num_value_heads for la in plan.layers) - removed
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}
    assert all(any(p is q for q in held) for p in optimizer.state)  # no state of removed tensors is left
    replaced = [(n, p) for n, p in model.named_parameters() if id(p) not in before]
    assert replaced
    for name, param in replaced:
        state = optimizer.state[param]
        assert torch.equal(state["exp_avg"], param.detach()), name  # sliced exactly like the weight
        assert state["exp_avg_sq"].shape == param.shape and bool((state["exp_avg_sq"] >= 0).all())
        assert float(state["step"]) == 2.0  # the step count goes on
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()  # shapes agree: the step runs on the pruned parameters
    with pytest.raises(RecipeError, match="another architecture"):
        apply_recipe(build_tiny_model("qwen3_5" if family == "qwen3_next" else "qwen3_next"),
                     recipe_text(top=f"architecture: {family}\n"), data=ids)  # fmt: skip


def test_retarget_without_carried_state_restarts_replaced_parameters():
    model = build_tiny_model("qwen3_next").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 300, (2, 64))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    names = {id(p): n for n, p in model.named_parameters()}
    apply_recipe(model, recipe_text("num_heads: 8"), data=ids)
    assert retarget_optimizer(optimizer, model, names) > 0
    fresh = [p for p in model.parameters() if id(p) not in names]
    assert fresh and not any(p in optimizer.state for p in fresh)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def test_callback_needs_a_start_step():
    with pytest.raises(RecipeError, match="needs start_step"):
        RankPruneCallback(RankPruneConfig(), tokenizer=None)
    assert RankPruneCallback(recipe_text("start_step: 4")).start_step == 4
    assert RankPruneCallback(REPO / "recipes" / "demo.yaml", start_step=1).start_step == 1


@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_training_example_prunes_mid_training_and_keeps_training(tmp_path, model):
    """The example on a tiny model built from config, and on the embedded demo model (32 value heads of d=32)."""
    if model == "demo" and not (REPO / "hf_rankprune" / "assets" / "demo_model" / "config.json").is_file():
        pytest.skip("the embedded demo model is not built")
    heads = 24 if model == "tiny" else 32
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_with_recipe.py"), *(["--tiny"] if model == "tiny" else []),
         "--max-steps", "6", "--prune-at", "3", "--seq-len", "64", "--batch-size", "2", "--summary", str(summary)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(summary.read_text())
    assert record["pruned_at_step"] == 3 and record["removed_value_heads"] > 0
    assert record["value_heads_before_prune"] == record["value_heads_start"] == heads
    assert record["value_heads_end"] == record["value_heads_after_prune"] == heads - record["removed_value_heads"]
    assert record["finite"] and sorted(record["train_loss"], key=int) == ["1", "2", "3", "4", "5", "6"]
    assert record["optimizer_covers_model_after_prune"]
    if model == "tiny":  # the global budget leaves the demo model's first layer whole
        assert record["watched_shape_after_prune"][1] < 8 * 16  # the watched out_proj lost heads ...
    assert record["watched_change_after_prune"] > 0  # ... and still trains after pruning
    assert f"value heads: {heads} ->" in result.stdout
