"""Model cards of pruned models (hf_rankprune/card.py, model_cards/): metadata the Hub parses, the content, and the
card `RankPruner.save_pretrained` writes."""

from __future__ import annotations

import time

import pytest
import yaml
from _pruning_reference import PLANS
from conftest import build_tiny_model, build_tiny_tokenizer
from huggingface_hub import ModelCard, ModelCardData

from hf_rankprune.arch import model_geometry
from hf_rankprune.card import (
    BASE_MODEL_RELATION,
    ModelCardError,
    base_model_license,
    build_model_card,
    hub_model_id,
    write_model_card,
)
from hf_rankprune.plan import PrunePlan
from hf_rankprune.pruner import RankPruner
from hf_rankprune.surgery import apply_plan

EVALUATION = {
    "original": {"passkey.accuracy": 0.9375, "perplexity.perplexity": 12.5, "perplexity.num_tokens": 4096,
                 "memory.linear_state_bytes": 24576, "passkey.per_example": [1, 0]},
    "pruned": {"passkey.accuracy": 0.90625, "perplexity.perplexity": 13.25, "perplexity.num_tokens": 4096,
               "memory.linear_state_bytes": 15360},
}  # fmt: skip
RECIPE = "pruning_stage:\n  pruning_modifiers:\n    RankPruningModifier:\n      ratio: 0.389\n"


def _plan(family: str, kind: str) -> PrunePlan:
    return PrunePlan.from_kept_heads(model_geometry(build_tiny_model(family)), PLANS[kind], settings={"score": "joint", "alpha": 0.5,
                                     "direction": "saturated", "budget": "global", "ratio": 0.389})  # fmt: skip


def _metadata(card: ModelCard) -> dict:
    """The YAML header as the Hub reads it, checked to parse with ModelCardData."""
    text = str(card)
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    ModelCardData(**header)  # raises on a malformed model-index
    return header


def test_ragged_card_metadata_and_content(tmp_path):
    plan = _plan("qwen3_next", "global")
    card = build_model_card(plan, base_model="Qwen/Qwen3-Next-80B-A3B-Instruct", license="apache-2.0",
                            evaluation=EVALUATION, recipe=RECIPE, context_length=8192, repo_id="me/next-rp39")  # fmt: skip
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.base_model == "Qwen/Qwen3-Next-80B-A3B-Instruct"
    assert data.to_dict()["base_model_relation"] == BASE_MODEL_RELATION == "quantized"
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert {"hf_rankprune", "pruned", "linear-attention", "qwen3_next"} <= set(data.tags)
    # model-index: the pruned model's scores only (no counts, no memory/speed), under the repo's name
    assert data.model_name == "next-rp39"
    assert {(r.metric_name, r.metric_value) for r in data.eval_results} == {
        ("passkey.accuracy", 0.90625),
        ("perplexity.perplexity", 13.25),
    }
    header = _metadata(loaded)
    assert header["model-index"][0]["name"] == "next-rp39"

    text = loaded.text
    assert "arXiv 2602.02195" in text and "Ao Sun" in text and "State Rank Dynamics in Linear Attention LLMs" in text
    # per-layer table: layer, value kept/total, key kept/total, removed value heads
    assert "| 0 | 4/8 | 2/2 | 1, 4, 6, 7 |" in text
    assert "| 1 | 7/8 | 2/2 | 0 |" in text
    assert "| 3 | 1/8 | 1/2 | 0, 1, 2, 3, 4, 5, 6 |" in text
    # memory at the stated context: the paper's figure (linear state) and the whole-model figure
    memory = plan.memory(context_length=8192)
    assert "**8,192 tokens**" in text
    assert f"| {100 * memory.state_reduction:.1f}% |" in text
    assert f"| {100 * memory.total_reduction:.1f}% |" in text
    # evaluation before/after, the recipe, and how to load a ragged model
    assert "| passkey.accuracy | 0.9375 | 0.9062 | -0.03125 (-3.3%) |" in text
    assert "| memory.linear_state_bytes | 24.00 KiB | 15.00 KiB | -9.00 KiB (-37.5%) |" in text  # readable bytes
    assert "e+0" not in text
    assert "Perplexity over 4,096 held-out tokens." in text  # what each figure rests on
    assert "per_example" not in text
    assert "RankPruningModifier:" in text and "--recipe recipe.yaml" in text
    assert 'from_pretrained("me/next-rp39", trust_remote_code=True)' in text and "import hf_rankprune" in text
    assert "pip install hf-rankprune" not in text and "`pip install -e .` in a clone" in text
    assert "no \"pruned\"" in text  # why the relation is "quantized"
    assert "ragged plan" in text


def test_uniform_card_without_base_model_or_evaluation(tmp_path):
    plan = _plan("qwen3_5", "uniform")
    card = write_model_card(tmp_path, plan, base_model_name="/data/my-model")
    header = _metadata(ModelCard.load(tmp_path / "README.md"))
    assert "base_model" not in header and "base_model_relation" not in header and "model-index" not in header
    assert "license" not in header and header["library_name"] == "transformers"
    assert "qwen3_5" in header["tags"]
    text = card.text
    assert "uniform plan" in text and "trust_remote_code" not in text
    assert 'AutoModelForCausalLM.from_pretrained("path/to/this/model")' in text
    assert "No evaluation results" in text and "figures/" not in text
    assert "hf-rankprune prune MODEL --score joint --alpha 0.5 --direction saturated --budget global" in text
    assert "/data/my-model" in text


def test_composed_plan_and_one_sided_evaluation():
    model = build_tiny_model("qwen3_5")
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["key_groups"], settings={"ratio": 0.5}))
    second = PrunePlan.from_kept_heads(model_geometry(model), {3: [0, 1, 2, 3]}, settings={"ratio": 0.25})
    composed = PrunePlan.from_config(model.config).compose(second)
    card = build_model_card(composed, evaluation={"pruned": {"passkey.accuracy": 1.0}})
    assert "several steps" in card.text and "Only the pruned model was evaluated." in card.text
    assert "| passkey.accuracy | - | 1 |  |" in card.text
    assert card.data.eval_results[0].metric_value == 1.0


@pytest.mark.parametrize(
    "evaluation, match",
    [
        ([1, 2], "must be a mapping"),
        ({"before": {}}, "unknown sides"),
        ({"pruned": 3}, "must map metric keys"),
    ],
)
def test_malformed_evaluation_is_refused(evaluation, match):
    with pytest.raises(ModelCardError, match=match):
        build_model_card(_plan("qwen3_5", "uniform"), evaluation=evaluation)


def test_license_of_the_base_model(tmp_path, hub):
    local = tmp_path / "base"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: other\nlicense_name: qwen\nlicense_link: LICENSE\n---\n# base\n")
    assert base_model_license(local) == {"license": "other", "license_name": "qwen", "license_link": "LICENSE"}
    assert base_model_license(tmp_path / "missing") is None

    # A Hub id: the card is fetched from the Hub (here the local one).
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url)
    api.create_repo("org/base")
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# base\n", path_in_repo="README.md", repo_id="org/base")
    assert base_model_license("org/base", endpoint=hub.url) == {"license": "mit"}
    assert base_model_license("org/absent", endpoint=hub.url) is None

    # Unreachable Hub: unknown, at once (no retry back-off).
    start = time.monotonic()
    assert base_model_license("org/other", endpoint="http://127.0.0.1:9") is None
    assert time.monotonic() - start < 5


def test_only_namespaced_hub_ids_become_base_model(tmp_path):
    assert hub_model_id("Qwen/Qwen3-Next-80B-A3B-Instruct") == "Qwen/Qwen3-Next-80B-A3B-Instruct"
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    for name in ("Qwen3_5ForCausalLM", "", None, "./org/model", "a/b/c", "org/has space", str(tmp_path / "org")):
        assert hub_model_id(name) is None, name


def test_save_pretrained_writes_card_and_figures(tmp_path):
    base = tmp_path / "base"
    build_tiny_model("qwen3_5").save_pretrained(base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    pruner = RankPruner.from_pretrained(base, tokenizer=build_tiny_tokenizer(), num_samples=2, seq_len=64)
    pruner.calibrate(progress=False)
    pruner.evaluation_results = {"pruned": "not a mapping"}
    with pytest.raises(ModelCardError):
        pruner.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["base"]

    pruner.evaluation_results = {side: {**values, "memory.context_length": 1024} for side, values in EVALUATION.items()}
    pruner.model_name = "a display name"  # the license still comes from the folder the model was loaded from
    pruner.recipe = RECIPE
    folder = pruner.save_pretrained(tmp_path / "out")
    assert (folder / "recipe.yaml").read_text() == RECIPE  # the card's reproduce line names a file the folder has
    assert "--recipe recipe.yaml" in (folder / "README.md").read_text()
    assert (folder / "figures" / "rank_trajectories.png").stat().st_size > 1000
    assert (folder / "rank_stats.json").is_file() and (folder / "prune_plan.json").is_file()
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0"  # carried over from the base model's card
    assert card.data.base_model is None  # a local folder is no Hub id
    assert "![rank_trajectories.png](figures/rank_trajectories.png)" in card.text
    assert "| passkey.accuracy | 0.9375 | 0.9062 |" in card.text
    plan = pruner.pruning_plan
    assert f"{plan.num_removed_value_heads} of {plan.num_value_heads} linear-attention value heads" in card.text
    # one context length for memory throughout: the evaluation's (1,024), not max_position_embeddings
    assert "**1,024 tokens**" in card.text and "Memory at 1,024 tokens per sequence" in card.text
    assert "2,048 tokens" not in card.text and "4,096 tokens" not in card.text
    assert ("trust_remote_code=True" in card.text) == (not plan.is_uniform)


def test_hub_cache_snapshot_folders_name_their_repo(tmp_path):
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3.5-9B" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert hub_model_id(str(snapshot)) == "Qwen/Qwen3.5-9B"
    other = tmp_path / "snapshots" / "0123abcd"
    other.mkdir(parents=True)
    assert hub_model_id(str(other)) is None
