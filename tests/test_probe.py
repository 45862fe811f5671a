import copy
import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from test_scoring import stats_for

from hf_rankprune import RankPruner
from hf_rankprune.cli import main
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.data import CalibrationSamples
from hf_rankprune.errors import ImportanceScoreError
from hf_rankprune.probe import (
    BEST_RULE,
    HIGHEST,
    LOWEST,
    best_score,
    probe_variants,
    render_probe_markdown,
    run_probe,
    verdict,
    write_probe,
)
from hf_rankprune.scoring import plan_from_stats

TEXTS = ["The state of a linear attention head is a matrix. " * 40, "Heads differ by the rank of that state. " * 40]
EVAL = dict(lengths=[256], depths=[0.5], num_keys=1, texts=TEXTS, max_tokens=192, window=64)
# importance scores measured on 2 x 24 tokens: one batch
SMALL = dict(num_samples=2, seq_len=24, batch_size=2)
SAMPLES = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _removed(plan_or_row) -> dict[str, list[int]]:
    if isinstance(plan_or_row, dict):
        return {layer: sorted(heads) for layer, heads in plan_or_row["removed"].items()}
    return {str(layer.layer): sorted(layer.removed_value_heads) for layer in plan_or_row.layers}


def test_run_probe_on_a_tiny_model_scores_every_way_and_recovers(tmp_path):
    model, tokenizer = build_tiny_model("qwen3_next"), build_tiny_tokenizer()
    rng = np.random.default_rng(0)
    stats = stats_for(model, [rng.integers(1, 17, 8).astype(float) for _ in range(3)], [np.ones(8)] * 3)
    before = {name: p.clone() for name, p in model.named_parameters()}
    recovered = []

    def recover(variant):  # stands in for recovery fine-tuning: changes the model, returns it
        recovered.append(variant)
        with torch.no_grad():
            variant.get_output_embeddings().weight.mul_(0.5)
        return variant

    config = RankPruneConfig(ratio=0.25, **SMALL)
    scores = ("kl", "taylor", "activation", "decay", "kl_greedy")
    result = run_probe(model, tokenizer, stats, config, seeds=(0, 1), scores=scores, samples=SAMPLES,
                       recover=recover, eval_kwargs=EVAL)  # fmt: skip
    rows = result["rows"]
    assert result["num_heads"] == 6 and result["scores"] == list(scores)
    assert list(rows) == ["original", HIGHEST, LOWEST, "JRNP", "random heads removed (seed 0)",
                          "random heads removed (seed 1)", *scores]  # fmt: skip
    assert all(row["removed_heads"] == 6 for name, row in rows.items() if name != "original")
    assert all(sum(map(len, row["removed"].values())) == 6 for name, row in rows.items() if name != "original")
    assert all(0.0 <= row["passkey.accuracy"] <= 1.0 and row["perplexity.perplexity"] > 1 for row in rows.values())
    # each score row removes the heads RankPruner plans with that score (measured on the original model)
    for name in scores:
        score_config = config.replace(num_heads=6, budget="global", score=name.removesuffix("_greedy"),
                                      direction=None, kl_greedy=name == "kl_greedy")  # fmt: skip
        pruner = RankPruner(copy.deepcopy(model), tokenizer, score_config)
        pruner.measure_importance(CalibrationSamples(SAMPLES, ["default"] * 2), progress=False, verbose=False)
        assert _removed(rows[name]) == _removed(pruner.plan()), name
    assert rows["decay"]["score_measured"]["forwards"] == 0 and rows["kl"]["score_measured"]["forwards"] > 0
    # the random control's spread is computed from the seeds
    randoms = [rows[f"random heads removed (seed {seed})"] for seed in (0, 1)]
    for key in ("passkey.accuracy", "perplexity.perplexity"):
        assert result["random_mean"][key] == pytest.approx(np.mean([row[key] for row in randoms]))
        assert result["random_std"][key] == pytest.approx(np.std([row[key] for row in randoms]))
    assert rows["kl"]["vs_random"]["perplexity"] in ("better", "worse", "no different")
    # recovery: once per pruned variant, its results under each row's after_recovery
    assert len(recovered) == len(rows) - 1 and len({id(m) for m in recovered}) == len(recovered)
    for name, row in rows.items():
        if name == "original":
            assert "after_recovery" not in row
            continue
        after = row["after_recovery"]
        assert after["perplexity.perplexity"] != row["perplexity.perplexity"]
        assert ("cost" in after and "vs_random" in after) == (not name.startswith("random"))
    assert result["best_score"] in rows and result["best_score_after_recovery"] in rows
    assert result["best_score"] == best_score(result) and "random_after_recovery" in result
    # every variant pruned a copy: the probed model is untouched
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    write_probe(result, tmp_path)
    assert json.loads((tmp_path / "probe.json").read_text())["verdict"] == result["verdict"]
    table = (tmp_path / "probe.md").read_text()
    assert table.startswith("# Pruning probe: 6 of 24 heads removed")
    assert "| after recovery: passkey | perplexity | vs random | cost |" in table
    assert "| kl: the 6 least important heads by output-KL ablation removed |" in table
    assert f"Best zero-shot score: {result['best_score']}; after recovery: " in table


def test_probe_without_scores_keeps_the_rank_rows_only():
    model, tokenizer = build_tiny_model("qwen3_5"), build_tiny_tokenizer()
    stats = stats_for(model, [np.arange(8, dtype=float) + p for p in range(3)], [np.ones(8)] * 3)
    result = run_probe(model, tokenizer, stats, RankPruneConfig(num_heads=3), seeds=(0,), scores=(),
                       eval_kwargs=EVAL)  # fmt: skip
    assert list(result["rows"]) == ["original", HIGHEST, LOWEST, "JRNP", "random heads removed (seed 0)"]
    assert result["random_std"] == {"passkey.accuracy": 0.0, "perplexity.perplexity": 0.0}
    assert "after_recovery" not in result["rows"]["JRNP"] and "best_score_after_recovery" not in result
    assert "Importance scores" not in result["verdict"] and f"drop): {result['best_score']} (" in result["verdict"]


def test_probe_refuses_bad_scores_and_data_scores_without_data_before_any_work():
    model = build_tiny_model("qwen3_5")
    stats = stats_for(model, [np.arange(8, dtype=float)] * 3, [np.ones(8)] * 3)
    calls = []
    handle = model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"unknown score\(s\) \['bogus'\] for the probe; valid scores: kl, "
                           "kl_greedy, taylor, activation, decay"):  # fmt: skip
            run_probe(model, build_tiny_tokenizer(), stats, RankPruneConfig(num_heads=3), scores=("kl", "bogus"))
        with pytest.raises(ImportanceScoreError, match=r"score\(s\) \['taylor'\] are measured on calibration samples"):
            run_probe(model, None, stats, RankPruneConfig(num_heads=3), scores=("decay", "taylor"))
    finally:
        handle.remove()
    assert not calls


def test_best_score_is_the_smallest_perplexity_increase_plus_passkey_drop():
    result = synthetic_result(0.9, 0.45, [0.6, 0.7, 0.5])  # original: passkey 1.0, perplexity 10
    rows = result["rows"]
    # costs: highest 0.2 + 0.1 = 0.3; lowest 2.0 + 0.55; JRNP 0.25 + 0.1 = 0.35
    rows["kl"] = {"passkey.accuracy": 0.52, "perplexity.perplexity": 11.0}  # 0.1 + 0.48 = 0.58
    rows["taylor"] = {"passkey.accuracy": 0.95, "perplexity.perplexity": 12.0}  # 0.2 + 0.05 = 0.25: the best
    rows["decay"] = {"passkey.accuracy": 0.85, "perplexity.perplexity": 11.0}  # 0.1 + 0.15 = 0.25: tie, lower ppl
    assert best_score(result) == "decay"
    rows["decay"]["perplexity.perplexity"] = 11.1
    assert best_score(result) == "taylor"
    rows["JRNP"]["passkey.accuracy"] = 1.0  # 0.25 + 0.0 = 0.25, perplexity 12.5: taylor still (lower perplexity)
    assert best_score(result) == "taylor"
    rows["random heads removed (seed 0)"].update({"passkey.accuracy": 1.0, "perplexity.perplexity": 10.0})
    assert best_score(result) == "taylor"  # random is the control, never the best score
    rows["kl"]["perplexity.perplexity"] = float("inf")
    assert best_score(result) == "taylor"
    # after recovery: the recovered figures against the same original
    for name in ("highest-rank heads removed", "lowest-rank heads removed", "JRNP", "kl", "taylor", "decay"):
        rows[name]["after_recovery"] = {"passkey.accuracy": 0.9, "perplexity.perplexity": 11.0}
    rows["kl"]["after_recovery"] = {"passkey.accuracy": 1.0, "perplexity.perplexity": 10.2}
    assert best_score(result, after_recovery=True) == "kl"
    result["verdict"] = verdict(result)
    assert "Best zero-shot score (smallest relative perplexity increase + passkey drop): taylor (passkey 95.0%" in (
        result["verdict"])  # fmt: skip
    assert "taylor passkey 95.0% (-5.0 points), perplexity 12.00 (+20.0%), better than random on passkey and better " \
           "than random on perplexity" in result["verdict"]  # fmt: skip
    result["best_score"] = best_score(result)
    table = render_probe_markdown(result)
    assert f"{BEST_RULE[0].upper()}{BEST_RULE[1:]}. Best zero-shot score: taylor." in table
    assert "| taylor: the 9 least important heads by first-order Taylor removed | 95.0% (-5.0 pts) | 12.00 (+20.0%) " \
           "| better / better | +0.25 (best) |" in table  # fmt: skip


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["eval", "--tasks", "perplexity,bogus"], "unknown task(s) ['bogus']"),
        (["eval", "--lengths", "512,8192"], "goes beyond the model's context (max_position_embeddings=4096)"),
        (["eval", "--depths", "0.5,1.5"], "every depth must lie in [0, 1]"),
        (["probe", "--seeds", ""], "give at least one seed"),
        (["probe", "--lengths", "99999"], "goes beyond the model's context"),
        (["probe", "--scores", "kl,bogus"], "--scores 'kl,bogus': unknown score(s) ['bogus'] for the probe; valid "
                                            "scores: kl, kl_greedy, taylor, activation, decay."),
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


def test_cli_probe_with_chosen_scores_writes_their_rows(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from hf_rankprune import cli

    flags = cli._eval_kwargs  # the flags as given, perplexity on a short text (the packaged one takes seconds a row)
    monkeypatch.setattr(cli, "_eval_kwargs", lambda *args: {**flags(*args), **{k: EVAL[k] for k in ("texts", "max_tokens",
                                                                                                  "window")}})  # fmt: skip
    out = tmp_path / "probe"
    code = main(["probe", str(tiny_model_dir), "--scores", "decay,activation", "--probe-heads", "3", "--seeds", "0",
                 "--num-samples", "2", "--seq-len", "128", "--batch-size", "2", "--grid-step", "64", "--lengths", "256",
                 "--depths", "0.5", "--num-keys", "1", "--quiet", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "probe.json").read_text())
    assert result["scores"] == ["decay", "activation"] and {"decay", "activation"} <= set(result["rows"])
    assert result["rows"]["activation"]["removed_heads"] == 3 and result["best_score"] in result["rows"]
    assert result["rows"]["activation"]["score_measured"]["samples"] == 2
    assert "| decay: the 3 least important heads by decay, data-free removed |" in (out / "probe.md").read_text()
