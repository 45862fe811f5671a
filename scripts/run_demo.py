"""The whole job on the embedded demo model (what `make demo` runs).

analyze -> evaluate the original -> probe (high vs low vs random vs JRNP) -> prune with the paper's settings ->
evaluate the pruned model -> save it with its card. Leaves in --out: analysis/ (report, figures), probe/ (table),
pruned_model/ (loadable, with README.md card), evaluation.json and summary.md.

    python scripts/run_demo.py --out demo_out [--recipe recipes/demo.yaml] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import hf_rankprune
from hf_rankprune.evaluation import evaluate_model
from hf_rankprune.loading import DEMO_MODEL_PATH, load_model_and_tokenizer
from hf_rankprune.probe import render_probe_markdown, run_probe, write_probe
from hf_rankprune.report import write_report
from hf_rankprune.utils import atomic_output_dir, check_output_dir

REPO = Path(__file__).resolve().parent.parent
EVAL_KEYS = ("passkey.accuracy", "passkey.accuracy@512", "passkey.accuracy@1024", "perplexity.perplexity",
             "memory.linear_state_bytes", "memory.kv_cache_bytes", "speed.decode_tokens_per_s")  # fmt: skip


def _value(key: str, value: float) -> str:
    if "accuracy" in key:
        return f"{value:.1%}"
    if key.endswith("_bytes"):
        return f"{int(value):,}"
    return f"{value:.2f}"


def summary_markdown(results: dict, probe: dict, plan, seconds: float) -> str:
    rows = [f"| {key} | {_value(key, results['original'][key])} | {_value(key, results['pruned'][key])} |"
            for key in EVAL_KEYS if key in results["original"]]  # fmt: skip
    memory = plan.memory(context_length=1024)
    return "\n".join([
        "# hf_rankprune demo",
        "",
        f"Model: the embedded demo model; pruned with the paper's settings (Joint Rank-Norm, alpha "
        f"{plan.settings['alpha']}, {plan.settings['budget']} budget, ratio {plan.settings['ratio']}): "
        f"{plan.settings['removed_value_heads']} of {plan.settings['total_value_heads']} value heads removed; "
        f"linear state {memory.state_bytes_before} -> {memory.state_bytes_after} bytes per sequence "
        f"({memory.state_reduction:.1%} less). Run time {seconds / 60:.1f} min.",
        "",
        "| metric | original | pruned |",
        "|---|---|---|",
        *rows,
        "",
        render_probe_markdown(probe),
        "",
        "Files: `analysis/report.md` (stratification, stability, figures), `probe/probe.md`, `pruned_model/` "
        "(loads with `AutoModelForCausalLM.from_pretrained` after `import hf_rankprune`; card in README.md).",
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "demo.yaml"))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    check_output_dir(args.out, args.overwrite)
    if not (DEMO_MODEL_PATH / "config.json").is_file():
        print(f"error: the embedded demo model is missing at {DEMO_MODEL_PATH}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    recipe = hf_rankprune.load_recipe(args.recipe)
    pruner = hf_rankprune.RankPruner.from_recipe(recipe)
    pruner.model_name = "hf-rankprune demo model"
    evaluation = dict(recipe.evaluation or {})
    tasks = evaluation.pop("tasks", ("perplexity", "passkey", "memory", "speed"))

    with atomic_output_dir(args.out, args.overwrite) as staging:
        print("[1/5] calibrating and analysing state ranks", flush=True)
        stats = pruner.calibrate()
        analysis = write_report(stats, staging / "analysis")
        print(f"      {analysis['stratification']['low_heads']} low-rank / "
              f"{analysis['stratification']['high_heads']} high-rank heads", flush=True)  # fmt: skip
        print("[2/5] evaluating the original model", flush=True)
        original = evaluate_model(pruner.model, pruner.tokenizer, tasks, **evaluation)
        print("[3/5] probing which heads the model can spare", flush=True)
        probe_kwargs = {k: v for k, v in evaluation.items() if k != "context_length"}
        probe = run_probe(pruner.model, pruner.tokenizer, stats, pruner.config, eval_kwargs=probe_kwargs,
                          model_factory=lambda: load_model_and_tokenizer(str(DEMO_MODEL_PATH))[0])  # fmt: skip
        (staging / "probe").mkdir()
        write_probe(probe, staging / "probe")
        print(f"      {probe['verdict']}", flush=True)
        print("[4/5] pruning with the paper's settings and evaluating the pruned model", flush=True)
        pruner.prune()
        pruned = evaluate_model(pruner.model, pruner.tokenizer, tasks, **evaluation)
        pruner.evaluation_results = {"original": original, "pruned": pruned}
        print("[5/5] saving the pruned model with its card", flush=True)
        pruner.save_pretrained(staging / "pruned_model")
        results = {"original": original, "pruned": pruned}
        (staging / "evaluation.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        summary = summary_markdown(results, probe, pruner.pruning_plan, time.perf_counter() - start)
        (staging / "summary.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
