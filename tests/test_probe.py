import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from test_scoring import stats_for

from hf_rankprune.cli import main
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.probe import HIGHEST, LOWEST, probe_variants, render_probe_markdown, run_probe, verdict, write_probe
from hf_rankprune.scoring import plan_from_stats

TEXTS = ["The state of a linear attention head is a matrix. " * 40, "Heads differ by the rank of that state. " * 40]
EVAL = dict(lengths=[400], depths=[0.5], num_keys=1, texts=TEXTS, max_tokens=600, window=256)


def synthetic_result(high_acc, low_acc, random_accs, high_ppl=12.0, low_ppl=30.0, jrnp_ppl=12.5, random_ppls=(20.0,)):
    rows = {"original": {"passkey.accuracy": 1.0, "perplexity.perplexity": 10.0, "passkey.num_examples": 40,
                         "perplexity.num_tokens": 19_961},
            HIGHEST: {"passkey.accuracy": high_acc, "perplexity.perplexity": high_ppl},
            LOWEST: {"passkey.accuracy": low_acc, "perplexity.perplexity": low_ppl},
            "JRNP": {"passkey.accuracy": high_acc, "perplexity.perplexity": jrnp_ppl}}  # fmt: skip
    ppls = list(random_ppls) * len(random_accs) if len(random_ppls) == 1 else list(random_ppls)
    for seed, (acc, ppl) in enumerate(zip(random_accs, ppls)):
        rows[f"random heads removed (seed {seed})"] = {"passkey.accuracy": acc, "perplexity.perplexity": ppl}
    mean = {"passkey.accuracy": float(np.mean(random_accs)), "perplexity.perplexity": float(np.mean(ppls))}
    std = {"passkey.accuracy": float(np.std(random_accs)), "perplexity.perplexity": float(np.std(ppls))}
    return {"num_heads": 9, "total_heads": 24, "seeds": list(range(len(random_accs))), "rows": rows,
            "random_mean": mean, "random_std": std}  # fmt: skip


def test_verdict_weighs_every_metric_and_names_the_groups():
    paper_like = synthetic_result(0.9, 0.45, [0.6, 0.7, 0.5])
    text = verdict(paper_like)
    assert text.startswith("Removing 9 of 24 heads (original: passkey 100.0%, perplexity 10.00) costs: the 9 "
                           "highest-rank heads passkey 90.0% (-10.0 points), perplexity 12.00 (+20.0%);")
    assert "the 9 lowest-rank heads passkey 45.0% (-55.0 points), perplexity 30.00 (+200.0%)" in text
    assert "cheaper group on both metrics" in text and "paper's direction (remove high-rank heads) holds" in text
    assert "JRNP (rank and norm jointly) is better than random on passkey and better than random on perplexity" in text
    assert "its 9 high-rank heads" not in text  # the groups are the top / bottom 9 by rank, not the report's split

    low_both = verdict(synthetic_result(0.2, 0.8, [0.3, 0.4, 0.5], high_ppl=30.0, low_ppl=12.0))
    assert "lowest-rank heads are the cheaper group on both metrics" in low_both and "direction='low_rank'" in low_both

    # the demo's pattern: passkey favours the highest-rank group, perplexity the lowest; JRNP keeps retrieval but has
    # the worst perplexity: the verdict must say both, not "better than random" alone
    demo = synthetic_result(0.575, 0.0, [0.0, 0.0, 0.0], high_ppl=115.19, low_ppl=99.68, jrnp_ppl=117.92,
                            random_ppls=(96.0, 97.7, 99.4))
    demo["rows"]["JRNP"]["passkey.accuracy"] = 0.825
    text = verdict(demo)
    assert "The metrics disagree: for passkey retrieval the highest-rank heads" in text
    assert "for perplexity the lowest-rank heads (worse than random)" in text
    assert "JRNP (rank and norm jointly) is better than random on passkey and worse than random on perplexity" in text

    paper_like["verdict"] = verdict(paper_like)
    table = render_probe_markdown(paper_like)
    assert "Each variant evaluated on passkey over 40 examples and perplexity over 19,961 held-out tokens." in table
    assert "| the 9 highest-rank heads removed | 90.0% (-10.0 pts) | 12.00 (+20.0%) |" in table
    assert "| 9 random heads removed (3 seeds, mean ± std) | 60.0% ± 8.2% | 20.00 ± 0.00 |" in table


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
    assert removed[HIGHEST] == {(layer, h) for _, layer, h in flat[:6]}
    assert removed[LOWEST] == {(layer, h) for _, layer, h in flat[-6:]}
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
