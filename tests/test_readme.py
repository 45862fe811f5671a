"""README.md stays true: its Python blocks run (those that can run offline on the demo model; the others are marked
`<!-- readme-test: skip (reason) -->` just above them), and `make demo` checks its figures (scripts/run_demo.py);
here a fast test of that check."""

import importlib.util
import re
from pathlib import Path

import pytest
from _pruning_reference import PLANS
from conftest import build_tiny_model

from hf_rankprune.arch import model_geometry
from hf_rankprune.plan import PrunePlan

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((?P<reason>[^)]+)\) -->")


def python_blocks(text: str) -> list[tuple[str | None, str]]:
    """(skip reason or None, code) of every ```python block, in order."""
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text, re.S):
        before = text[: match.start()].rstrip("\n").splitlines()
        skip = SKIP.fullmatch(before[-1].strip()) if before else None
        blocks.append((skip["reason"] if skip else None, match.group(1)))
    return blocks


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    runnable = [code for reason, code in blocks if reason is None]
    assert len(runnable) >= 3, "the README should show runnable Python"
    assert all(reason.strip() for reason, _ in blocks if reason is not None)
    monkeypatch.chdir(tmp_path)  # blocks write relative paths ("out/")
    namespace: dict = {"__name__": "readme"}
    for index, code in enumerate(runnable):
        try:
            exec(compile(code, f"README.md python block {index}", "exec"), namespace)
        except Exception as error:  # name the block that broke
            pytest.fail(f"README python block {index} failed: {type(error).__name__}: {error}\n{code}")


def _run_demo_module():
    spec = importlib.util.spec_from_file_location("run_demo", REPO / "scripts" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_like_run():
    model = build_tiny_model("qwen3_5")
    plan = PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"], settings={
        "alpha": 0.5, "budget": "global", "ratio": 0.389, "removed_value_heads": 12, "total_value_heads": 24})  # fmt: skip
    analysis = {
        "num_samples": 16, "seq_len": 512,
        "stratification": {"low_heads": 21, "high_heads": 3, "bimodality": {"coefficient": 0.7691}},
        "stability": {"early_token": 128, "late_token": 512, "spearman_rank_early_vs_late": 0.9831,
                      "min_cosine_rank_vs_final": 0.99, "min_cosine_norm_vs_final": 0.993,
                      "min_pairwise_label_agreement_across_categories": 0.875},
    }  # fmt: skip
    side = {"passkey.accuracy": 1.0, "passkey.num_examples": 40, "passkey.num_examples@512": 20,
            "passkey.num_examples@1024": 20, "perplexity.perplexity": 53.75, "perplexity.num_tokens": 19_961,
            "perplexity.window": 512, "memory.context_length": 1024, "memory.kv_cache_bytes": 524_288}  # fmt: skip
    results = {"original": side, "pruned": {**side, "passkey.accuracy": 0.825, "perplexity.perplexity": 93.08}}
    rows = {"original": {"passkey.accuracy": 1.0, "perplexity.perplexity": 53.75, "passkey.num_examples": 40,
                         "perplexity.num_tokens": 19_961},
            "highest-rank heads removed": {"passkey.accuracy": 0.575, "perplexity.perplexity": 80.0},
            "lowest-rank heads removed": {"passkey.accuracy": 0.0, "perplexity.perplexity": 70.0},
            "JRNP": {"passkey.accuracy": 0.825, "perplexity.perplexity": 93.08}}  # fmt: skip
    probe = {"num_heads": 12, "total_heads": 24, "seeds": [0, 1, 2], "rows": rows, "verdict": "The verdict.",
             "random_mean": {"passkey.accuracy": 0.0, "perplexity.perplexity": 69.92},
             "random_std": {"passkey.accuracy": 0.0, "perplexity.perplexity": 1.5}}  # fmt: skip
    return analysis, results, probe, plan


def test_demo_check_compares_every_readme_figure_with_the_run():
    demo = _run_demo_module()
    block = demo.results_markdown(*_demo_like_run())
    assert block.startswith(demo.BEGIN) and block.endswith(demo.END)
    assert "| perplexity (packaged held-out text) | 53.75 | 93.08 | 19,961 tokens, windows of 512 |" in block
    assert "| passkey accuracy (512 and 1024 tokens) | 100.0% | 82.5% | 40 examples (20 per length) |" in block
    assert "| bimodality coefficient | 0.769 | |" in block and "> The verdict." in block
    readme = demo.update_readme(block, f"intro\n\n{demo.BEGIN}\nold figures\n{demo.END}\n\nmore\n")
    assert readme.startswith("intro\n\n") and readme.endswith("\n\nmore\n")
    assert demo.check_readme(block, readme) == []
    stale = readme.replace("| 53.75 | 93.08 |", "| 79.21 | 117.92 |")
    problems = demo.check_readme(block, stale)
    assert len(problems) == 1 and "79.21" in problems[0] and "53.75" in problems[0]
    assert demo.check_readme(block, "no block here") and "no demo-results block" in demo.check_readme(block, "")[0]


def test_readme_has_one_demo_results_block():
    demo = _run_demo_module()
    text = README.read_text(encoding="utf-8")
    assert text.count(demo.BEGIN) == 1 and text.count(demo.END) == 1
    assert text.index(demo.BEGIN) < text.index(demo.END)


def test_the_demo_block_shows_jrnp_the_best_zero_shot_score_and_its_recovery_side_by_side():
    demo = _run_demo_module()
    analysis, results, probe, plan = _demo_like_run()
    probe = {**probe, "best_score": "kl"}
    results = {**results, "best_zero_shot": {"passkey.accuracy": 1.0, "perplexity.perplexity": 60.85},
               "recovered": {"passkey.accuracy": 1.0, "perplexity.perplexity": 55.0},
               "recovery": {"steps": 200, "settings": {"batch_size": 4, "seq_len": 512, "retrieval_mix": 0.25}}}
    block = demo.results_markdown(analysis, results, probe, plan)
    assert "| JRNP (the paper's score) | 82.5% (-17.5 pts) | 93.08 (1.732x) |" in block
    assert "| best zero-shot score: `kl` | 100.0% (+0.0 pts) | 60.85 (1.132x) |" in block
    assert "| `kl` + recovery | 100.0% (+0.0 pts) | 55.00 (1.023x) |" in block
    assert "200 steps of distillation" in block and "4 x 512 tokens a step, 25% of them retrieval documents" in block

