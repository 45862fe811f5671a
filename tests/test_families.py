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
    model, tokenizer = load_model_and_tokenizer(str(source))
    linear = [layer.index for layer in get_adapter(model).linear_layers()]  # 0, 1, 3 (and 2: Mamba2, Zamba2)
    assert stats.layers == linear and stats.num_heads == [8] * len(linear)
    removed = 2 * len(linear)  # 6, or 8 with a mixer at layer 2: a uniform budget can remove it
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    for budget in BUDGETS:
        for direction in DIRECTIONS:
            config = RankPruneConfig(budget=budget, direction=direction, num_heads=removed)
            plan = plan_from_stats(model, stats, config)
            assert plan.num_removed_value_heads == removed, (budget, direction)
            pruned = apply_plan(copy.deepcopy(model), plan)
            with torch.no_grad():
                assert torch.isfinite(pruned(ids).logits).all(), (budget, direction)

    config = RankPruneConfig(num_heads=removed)
    result = run_probe(model, build_tiny_tokenizer(), stats, config, seeds=(0,), scores=("decay",), eval_kwargs=EVAL)
    assert result["num_heads"] == removed and all(row["perplexity.perplexity"] > 1 for row in result["rows"].values())

    out = tmp_path / "pruned"
    code = main(["prune", str(source), "--stats", str(analysis / "rank_stats.json"), "--num-heads", str(removed),
                 "--budget", "global", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert f"**Heads removed:** {removed} of {8 * len(linear)} linear-attention value heads" in card, card[:2000]
    kinds: dict[str, int] = {}  # the attention layers: full, sliding, indexed or hybrid (Falcon-H1: every layer)
    for kind in model.config.get_text_config().layer_types:
        if kind != "linear_attention":
            kinds[kind] = kinds.get(kind, 0) + 1
    others = "".join(f", {n} {kind.removesuffix('_attention').replace('_', '-')}-attention layer{'s' * (n != 1)}"
                     for kind, n in kinds.items())  # fmt: skip
    assert f"({len(linear)} linear-attention layers{others})" in card
    assert f"Every head of a linear-attention layer ({get_adapter(model).recurrence}) carries" in card
    reloaded, _ = load_model_and_tokenizer(str(out))
    assert PrunePlan.from_json_file(out / "prune_plan.json").num_kept_value_heads == 8 * len(linear) - removed
    assert reloaded.config.get_text_config().model_type.startswith(model.config.get_text_config().model_type)

