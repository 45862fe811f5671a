import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from test_scoring import stats_for

from hf_rankprune.cli import main
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.probe import probe_variants, render_probe_markdown, run_probe, verdict, write_probe
from hf_rankprune.scoring import plan_from_stats

TEXTS = ["The state of a linear attention head is a matrix. " * 40, "Heads differ by the rank of that state. " * 40]
EVAL = dict(lengths=[400], depths=[0.5], num_keys=1, texts=TEXTS, max_tokens=600, window=256)


def synthetic_result(high_acc, low_acc, random_accs):
    rows = {"original": {"passkey.accuracy": 1.0, "perplexity.perplexity": 10.0},
            "high-rank heads removed": {"passkey.accuracy": high_acc, "perplexity.perplexity": 12.0},
            "low-rank heads removed": {"passkey.accuracy": low_acc, "perplexity.perplexity": 30.0},
            "JRNP": {"passkey.accuracy": high_acc, "perplexity.perplexity": 12.5}}  # fmt: skip
    for seed, acc in enumerate(random_accs):
        rows[f"random heads removed (seed {seed})"] = {"passkey.accuracy": acc, "perplexity.perplexity": 20.0}
    mean = {"passkey.accuracy": float(np.mean(random_accs)), "perplexity.perplexity": 20.0}
    std = {"passkey.accuracy": float(np.std(random_accs)), "perplexity.perplexity": 0.0}
    return {"num_heads": 9, "total_heads": 24, "seeds": list(range(len(random_accs))), "rows": rows,
            "random_mean": mean, "random_std": std}  # fmt: skip


def test_verdict_names_the_group_the_model_can_spare():
    paper_like = synthetic_result(0.9, 0.45, [0.6, 0.7, 0.5])
    text = verdict(paper_like)
    assert "can spare its high-rank heads" in text and "holds here" in text
    assert "JRNP (rank and norm jointly) keeps 90.0% passkey accuracy (perplexity 12.50), better than random" in text
    reversed_model = synthetic_result(0.2, 0.8, [0.6, 0.7, 0.5])
    text = verdict(reversed_model)
    assert "can spare its low-rank heads" in text and "direction='low_rank'" in text
    assert "JRNP (rank and norm jointly) keeps 20.0% passkey accuracy (perplexity 12.50), no better than random" in text
    neither = verdict(synthetic_result(0.0, 0.0, [0.1, 0.0, 0.05]))
    assert neither.startswith("Neither rank group alone can go at 9 heads")
    paper_like["verdict"] = verdict(paper_like)
    table = render_probe_markdown(paper_like)
    assert "| high-rank heads removed | 90.0% | 12.00 |" in table
    assert "| random heads removed (3 seeds, mean ± std) | 60.0% ± 8.2% | 20.00 ± 0.00 |" in table


def test_variants_remove_equal_counts_of_the_right_heads():
    model = build_tiny_model("qwen3_5")
    rng = np.random.default_rng(1)
    ranks = [rng.permutation(16)[:8].astype(float) for _ in range(3)]
    stats = stats_for(model, ranks, [np.ones(8)] * 3)
    variants = probe_variants(RankPruneConfig(), 6, seeds=(0, 1))
    removed = {name: {(la.layer, h) for la in plan_from_stats(model, stats, cfg).layers for h in la.removed_value_heads}
               for name, cfg in variants.items()}  # fmt: skip
    assert all(len(heads) == 6 for heads in removed.values())
    flat = sorted(((r, layer, h) for (layer, rs) in zip((0, 1, 3), ranks) for h, r in enumerate(rs)), reverse=True)
    assert removed["high-rank heads removed"] == {(layer, h) for _, layer, h in flat[:6]}
    assert removed["low-rank heads removed"] == {(layer, h) for _, layer, h in flat[-6:]}
    assert removed["random heads removed (seed 0)"] != removed["random heads removed (seed 1)"]


def test_run_probe_on_a_tiny_model(tmp_path):
    model, tokenizer = build_tiny_model("qwen3_next"), build_tiny_tokenizer()
    rng = np.random.default_rng(0)
    stats = stats_for(model, [rng.integers(1, 17, 8).astype(float) for _ in range(3)], [np.ones(8)] * 3)
    before = {name: p.clone() for name, p in model.named_parameters()}
    result = run_probe(model, tokenizer, stats, RankPruneConfig(ratio=0.25), seeds=(0, 1), eval_kwargs=EVAL)
    assert result["num_heads"] == 6 and len(result["rows"]) == 1 + 3 + 2
    assert all(row["removed_heads"] == 6 for name, row in result["rows"].items() if name != "original")
    assert all(0.0 <= row["passkey.accuracy"] <= 1.0 and row["perplexity.perplexity"] > 1 for row in result["rows"].values())
    # every variant pruned a copy: the probed model is untouched
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    write_probe(result, tmp_path)
    assert json.loads((tmp_path / "probe.json").read_text())["verdict"] == result["verdict"]
    assert (tmp_path / "probe.md").read_text().startswith("# Pruning probe: 6 of 24 heads removed")


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["eval", "--tasks", "perplexity,bogus"], "unknown task(s) ['bogus']"),
        (["eval", "--lengths", "512,8192"], "goes beyond the model's context (max_position_embeddings=4096)"),
        (["eval", "--depths", "0.5,1.5"], "every depth must lie in [0, 1]"),
        (["probe", "--seeds", ""], "give at least one seed"),
        (["probe", "--lengths", "99999"], "goes beyond the model's context"),
    ],
)
def test_eval_and_probe_bad_inputs(tiny_model_dir, tmp_path, capsys, argv, pattern):
    out = tmp_path / "out.json"
    code = main([argv[0], str(tiny_model_dir), *argv[1:], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_eval_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    code = main(["eval", str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert code == 2 and "is not a model folder" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
