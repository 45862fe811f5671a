import json
from pathlib import Path

import pytest
import torch
from accelerate import dispatch_model
from conftest import build_tiny_model, build_tiny_tokenizer, save_tiny_model
from optimum.quantization_base import OptimumQuantizer
from transformers import AutoModelForCausalLM

import hf_rankprune  # noqa: F401  (registers the pruned model types)
from hf_rankprune.arch import model_geometry
from hf_rankprune.cli import main
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.plan import PlanError, PrunePlan
from hf_rankprune.pruner import RankPruner
from hf_rankprune.stats import StatsError

SMALL = dict(num_samples=3, seq_len=128)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_prune_calibrates_plans_and_saves(tmp_path):
    tokenizer = build_tiny_tokenizer()
    pruner = RankPruner.from_pretrained(build_tiny_model("qwen3_next"), tokenizer=tokenizer, **SMALL)
    assert isinstance(pruner, OptimumQuantizer) and pruner.stats is None
    model = pruner.prune()
    assert pruner.stats.num_samples == 3
    plan = pruner.pruning_plan
    assert plan.settings["removed_value_heads"] == round(0.389 * 24)
    assert sum(m.num_v_heads for m in model.modules() if hasattr(m, "num_v_heads")) == 15
    ids = torch.randint(0, 300, (1, 40))
    expected = logits(model, ids)
    pruner.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert torch.allclose(logits(loaded, ids), expected, atol=1e-5)
    assert json.loads((tmp_path / "pruned" / "prune_plan.json").read_text())["settings"]["budget"] == "global"
    with pytest.raises(PlanError, match="after prune"):
        pruner.calibrate()


def test_quantize_is_prune_and_save(tmp_path):
    pruner = RankPruner.from_pretrained(build_tiny_model("qwen3_5"), tokenizer=build_tiny_tokenizer(),
                                        budget="uniform", ratio=0.5, **SMALL)  # fmt: skip
    pruner.quantize(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["linear_num_value_heads"] == 4 and config["model_type"] == "qwen3_5_text"


def test_from_pretrained_folder_with_stats_file_and_config_object(tmp_path):
    folder = save_tiny_model("qwen3_5", tmp_path / "model")
    first = RankPruner.from_pretrained(folder, RankPruneConfig(**SMALL))
    stats = first.calibrate(progress=False)
    stats.to_json_file(tmp_path / "stats.json")
    second = RankPruner.from_pretrained(str(folder), {"ratio": 0.25, **SMALL})
    second.load_stats(tmp_path / "stats.json")
    assert second.plan().settings["removed_value_heads"] == 6
    other = RankPruner.from_pretrained(build_tiny_model("qwen3_5", linear_num_value_heads=4), **SMALL)
    other.load_stats(tmp_path / "stats.json")
    with pytest.raises(StatsError, match="made for another model"):
        other.plan()


def test_pruning_a_dispatched_model_with_offload(tmp_path):
    reference = RankPruner.from_pretrained(build_tiny_model("qwen3_5"), tokenizer=build_tiny_tokenizer(), **SMALL)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "cpu", "model.layers.3": "cpu",
                  "model.norm": "cpu", "lm_head": "cpu"}  # fmt: skip
    dispatched = dispatch_model(build_tiny_model("qwen3_5"), device_map=device_map, offload_dir=str(tmp_path))
    offloaded = RankPruner.from_pretrained(dispatched, tokenizer=build_tiny_tokenizer(), **SMALL)
    offloaded.load_stats(reference.calibrate(progress=False))
    ids = torch.randint(0, 300, (1, 30))
    assert torch.allclose(logits(offloaded.prune(), ids), logits(reference.prune(), ids), atol=1e-5)


def test_pruning_a_pruned_model_composes_plans(tmp_path):
    tokenizer = build_tiny_tokenizer()
    first = RankPruner.from_pretrained(build_tiny_model("qwen3_next"), tokenizer=tokenizer, ratio=0.25, **SMALL)
    first.save_pretrained(tmp_path / "once")
    second = RankPruner.from_pretrained(tmp_path / "once", ratio=0.25, **SMALL)
    second.save_pretrained(tmp_path / "twice")
    plan = PrunePlan.from_json_file(tmp_path / "twice" / "prune_plan.json")
    assert [layer.num_value_heads for layer in plan.layers] == [8, 8, 8]  # relative to the original model
    assert sum(len(layer.kept_value_heads) for layer in plan.layers) == 24 - 6 - 4


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_cli_prune_and_bad_inputs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, captured = run_cli(capsys, "prune", tiny_model_dir, "--num-samples", 2, "--seq-len", 128, "--quiet",
                             "--budget", "uniform", "--ratio", "0.5", "--out", out)  # fmt: skip
    assert code == 0 and "Removed 12 of 24 value heads (uniform plan)" in captured.out
    assert "Uniform budget: removing 12 of 24 value heads" in captured.out  # said before calibration
    assert captured.out.index("Uniform budget") < captured.out.index("Removed 12")
    assert AutoModelForCausalLM.from_pretrained(out).config.linear_num_value_heads == 4
    code, _ = run_cli(capsys, "analyze", tiny_model_dir, "--num-samples", 2, "--seq-len", 128, "--quiet",
                      "--out", tmp_path / "analysis")  # fmt: skip
    assert code == 0
    code, captured = run_cli(capsys, "prune", tiny_model_dir, "--stats", tmp_path / "analysis" / "rank_stats.json",
                             "--out", tmp_path / "from_stats")  # fmt: skip
    assert code == 0 and "Removed 9 of 24" in captured.out
    bad = [
        (["--ratio", "1.5"], "ratio=1.5 is not allowed"),
        (["--ratio", "0"], "ratio=0.0 is not allowed"),
        (["--budget", "uniform", "--protected-layers", "0"], "cannot protect layers"),
        (["--num-heads", "24"], "would remove every one"),
        (["--budget", "uniform", "--ratio", "0.05"], "none is at or below it. Ask for at least 6 heads"),
        (["--num-heads", "3", "--ratio", "0.2"], "--ratio and --num-heads both set the budget"),
    ]
    for argv, pattern in bad:
        target = tmp_path / "bad"
        code, captured = run_cli(capsys, "prune", tiny_model_dir, "--num-samples", 1, "--seq-len", 64, "--quiet",
                                 *argv, "--out", target)  # fmt: skip
        assert code == 2 and pattern in captured.err and "Traceback" not in captured.err, captured.err
        assert not target.exists()
    other = save_tiny_model("qwen3_5", tmp_path / "other", linear_num_value_heads=4)
    code, captured = run_cli(capsys, "prune", other, "--stats", tmp_path / "analysis" / "rank_stats.json",
                             "--out", tmp_path / "bad")  # fmt: skip
    assert code == 2 and "made for another model" in captured.err
    code, captured = run_cli(capsys, "prune", tiny_model_dir, "--out", out)
    assert code == 2 and "exists and is not empty" in captured.err


def test_a_model_that_cannot_carry_a_ragged_plan_is_refused_before_any_work():
    """A subclass the package has no ragged counterpart for: per-layer budgets are refused up front (uniform works),
    and `apply_plan` with a ragged plan leaves the model untouched."""
    from transformers import Qwen3_5ForCausalLM

    from hf_rankprune.surgery import apply_plan

    class MyQwen(Qwen3_5ForCausalLM):
        pass

    model = MyQwen(build_tiny_model("qwen3_5").config).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for budget in ("global", "per_layer"):
        with pytest.raises(PlanError, match="cannot carry a ragged"):
            RankPruner.from_pretrained(model, tokenizer=build_tiny_tokenizer(), budget=budget, **SMALL)
    with pytest.raises(PlanError, match="cannot carry a ragged"):
        apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), {0: [0, 1, 2], 1: [3, 4, 5, 6, 7]}))
    after = model.state_dict()
    assert type(model) is MyQwen and before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    RankPruner.from_pretrained(model, tokenizer=build_tiny_tokenizer(), budget="uniform", **SMALL)


def test_demo_model_defaults_are_its_recipe_calibration(tmp_path):
    """`RankPruner.from_pretrained()` on the demo model calibrates 16 x 512 tokens (recipes/demo.yaml), not the
    64 x 2048 meant for large models; given settings win; other models keep RankPruneConfig's defaults."""
    from hf_rankprune.pruner import DEMO_CALIBRATION, default_config
    from hf_rankprune.recipe import load_recipe

    demo = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml").config
    assert DEMO_CALIBRATION == {key: getattr(demo, key) for key in DEMO_CALIBRATION}
    pruner = RankPruner.from_pretrained()
    assert (pruner.config.num_samples, pruner.config.seq_len, pruner.config.batch_size) == (16, 512, 4)
    assert RankPruner.from_pretrained(num_samples=2).config.num_samples == 2
    assert RankPruner.from_pretrained(pruner.model).config.seq_len == 512  # a loaded demo model too
    assert RankPruner.from_pretrained(None, RankPruneConfig()).config.seq_len == 2048  # an explicit config wins
    assert (default_config(tmp_path).num_samples, default_config(tmp_path).seq_len) == (64, 2048)
