"""Every family of tests/families/ through the whole job, from a checkpoint on disk: analyze with figures, plans for
every budget and direction, the probe, prune with its card. (Exactness of every plan kind: test_surgery.py; saving
and reloading in every mode: test_roundtrip.py; both run over every family too.)"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import build_tiny_tokenizer, save_tiny_model
from families import FAMILIES

from hf_rankprune.arch import get_adapter
from hf_rankprune.cli import main
from hf_rankprune.config import BUDGETS, DIRECTIONS, RankPruneConfig
from hf_rankprune.loading import load_model_and_tokenizer
from hf_rankprune.plan import PrunePlan
from hf_rankprune.probe import run_probe
from hf_rankprune.scoring import plan_from_stats
from hf_rankprune.stats import RankStats
from hf_rankprune.surgery import apply_plan

TEXTS = ["The state of a linear attention head is a matrix. " * 40, "Heads differ by the rank of that state. " * 40]
EVAL = dict(lengths=[256], depths=[0.5], num_keys=1, texts=TEXTS, max_tokens=300, window=128)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_whole_job_on_every_family(family, tmp_path, capsys):
    source = save_tiny_model(family, tmp_path / "model")
    analysis = tmp_path / "analysis"
    code = main(["analyze", str(source), "--num-samples", "3", "--seq-len", "128", "--quiet", "--out", str(analysis)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((analysis / "report.json").read_text())
    assert report["grid"] == [64, 128]
    assert {p.name for p in (analysis / "figures").iterdir()} == {
        "rank_trajectories.png",
        "rank_heatmap.png",
        "rank_histogram.png",
    }
    stats = RankStats.from_json_file(analysis / "rank_stats.json")
    assert stats.layers == [0, 1, 3] and stats.num_heads == [8, 8, 8]

    model, tokenizer = load_model_and_tokenizer(str(source))
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    for budget in BUDGETS:
        for direction in DIRECTIONS:
            config = RankPruneConfig(budget=budget, direction=direction, num_heads=6)
            plan = plan_from_stats(model, stats, config)
            assert plan.num_removed_value_heads == 6, (budget, direction)
            pruned = apply_plan(copy.deepcopy(model), plan)
            with torch.no_grad():
                assert torch.isfinite(pruned(ids).logits).all(), (budget, direction)

    result = run_probe(model, build_tiny_tokenizer(), stats, RankPruneConfig(num_heads=6), seeds=(0,), eval_kwargs=EVAL)
    assert result["num_heads"] == 6 and all(row["perplexity.perplexity"] > 1 for row in result["rows"].values())

    out = tmp_path / "pruned"
    code = main(["prune", str(source), "--stats", str(analysis / "rank_stats.json"), "--num-heads", "6",
                 "--budget", "global", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "**Heads removed:** 6 of 24 linear-attention value heads" in card, card[:2000]
    attention = model.config.get_text_config().layer_types[2].removesuffix("_attention").replace("_", "-")
    assert f"(3 linear-attention layers, 1 {attention}-attention layer)" in card  # full, sliding or indexed
    assert f"Every head of a linear-attention layer ({get_adapter(model).recurrence}) carries" in card
    reloaded, _ = load_model_and_tokenizer(str(out))
    assert PrunePlan.from_json_file(out / "prune_plan.json").num_kept_value_heads == 18
    assert reloaded.config.get_text_config().model_type.startswith(model.config.get_text_config().model_type)

