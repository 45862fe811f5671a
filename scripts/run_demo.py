"""The whole job on the embedded demo model (what `make demo` runs).

analyze -> evaluate the original -> probe (highest- vs lowest-rank vs random vs JRNP vs every head-importance score)
-> prune with the demo recipe (JRNP) -> evaluate -> save -> prune with the probe's best zero-shot score -> save ->
recover that model by distillation (`hf_rankprune.recovery.recover`, the recipe's recovery stage) -> evaluate.
Leaves in --out: analysis/ (report, figures), probe/ (table), pruned_model/ (JRNP), best_zero_shot_model/,
recovered_model/ (each loadable, with its README.md card), evaluation.json and summary.md.

    python scripts/run_demo.py --out demo_out [--recipe recipes/demo.yaml] [--overwrite] [--update-readme]
    python scripts/run_demo.py --readme-from demo_out [--update-readme]   # check README.md against a finished run

At the end the run compares its figures with README.md's demo-results block and exits with 1 when they differ
(`--update-readme` writes them into README.md instead).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import hf_rankprune
from hf_rankprune.data import load_calibration_samples
from hf_rankprune.evaluation import evaluate_model
from hf_rankprune.loading import DEMO_MODEL_NAME, DEMO_MODEL_PATH, load_model_and_tokenizer
from hf_rankprune.probe import probe_variants, render_probe_markdown, run_probe, score_variants, write_probe
from hf_rankprune.recovery import recover
from hf_rankprune.report import write_report
from hf_rankprune.utils import atomic_output_dir, check_output_dir

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BEGIN = "<!-- demo-results: begin (written by scripts/run_demo.py; `make demo` checks README.md against it) -->"
END = "<!-- demo-results: end -->"


def _f3(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def results_markdown(analysis: dict, results: dict, probe: dict, plan) -> str:
    """The demo's figures as README.md shows them (between BEGIN and END): rank statistics, original vs pruned, and
    the probe, each figure with the samples, examples or tokens behind it. Run time and speed are left out: they
    depend on the machine."""
    strat, stab = analysis["stratification"], analysis["stability"]
    original, pruned = results["original"], results["pruned"]
    context = int(original["memory.context_length"])
    memory = plan.memory(context_length=context)
    lengths = sorted(int(k.split("@")[1]) for k in original if k.startswith("passkey.num_examples@"))
    depths = int(original["passkey.num_examples@" + str(lengths[0])]) if lengths else 0
    settings = plan.settings
    rows = [
        f"| passkey accuracy ({' and '.join(map(str, lengths))} tokens) | {original['passkey.accuracy']:.1%} | "
        f"{pruned['passkey.accuracy']:.1%} | {int(original['passkey.num_examples'])} examples ({depths} per length) |",
        f"| perplexity (packaged held-out text) | {original['perplexity.perplexity']:.2f} | "
        f"{pruned['perplexity.perplexity']:.2f} | {int(original['perplexity.num_tokens']):,} tokens, windows of "
        f"{int(original['perplexity.window'])} |",
        f"| linear-attention state per sequence | {memory.state_bytes_before:,} B | {memory.state_bytes_after:,} B "
        f"(-{memory.state_reduction:.1%}) | fp32 state |",
        f"| full-attention KV cache at {context} tokens | {int(original['memory.kv_cache_bytes']):,} B | "
        f"{int(pruned['memory.kv_cache_bytes']):,} B | one sequence |",
    ]
    side_by_side = _side_by_side(results, probe)
    probe_lines = render_probe_markdown(probe).strip().splitlines()
    table = [line for line in probe_lines if line.startswith("|")]
    basis = [line for line in probe_lines if line.startswith("Each variant")]
    return "\n".join([
        BEGIN,
        f"| statistic (demo model, {analysis['num_samples']} samples x {analysis['seq_len']} tokens) | value | "
        "paper (Qwen3-Next-80B) |",
        "|---|---|---|",
        f"| heads low / high rank (split at the widest gap) | {strat['low_heads']} / {strat['high_heads']} | two groups |",
        f"| bimodality coefficient | {_f3(strat['bimodality']['coefficient'])} | |",
        f"| Spearman rho of per-head rank, t={stab['early_token']} vs t={stab['late_token']} | "
        f"{_f3(stab['spearman_rank_early_vs_late'])} | > 0.90 |",
        f"| min cosine of rank vectors over time | {_f3(stab['min_cosine_rank_vs_final'])} | > 0.97 |",
        f"| min cosine of norm vectors over time | {_f3(stab['min_cosine_norm_vs_final'])} | > 0.98 |",
        f"| min label agreement between context categories | "
        f"{_f3(stab['min_pairwise_label_agreement_across_categories'])} | stable |",
        "",
        f"Pruning with the paper's scoring and budget (Joint Rank-Norm, {settings['budget']} budget, ratio "
        f"{settings['ratio']} = {settings['removed_value_heads']} of {settings['total_value_heads']} heads) and alpha "
        f"{settings['alpha']} (the paper does not give its alpha):",
        "",
        "| metric | original | pruned | based on |",
        "|---|---|---|---|",
        *rows,
        "",
        *side_by_side,
        "",
        f"The probe (`hf-rankprune probe`): the paper's Table 1 with the random control it lacked, "
        f"{probe['num_heads']} heads removed in each variant. {' '.join(basis)}",
        "",
        *table,
        "",
        "> " + probe["verdict"],
        END,
    ])  # fmt: skip


def _side_by_side(results: dict, probe: dict) -> list[str]:
    """The paper's choice, the best zero-shot choice of the probe and that choice recovered, one row each."""
    if "recovered" not in results:
        return []
    original, best = results["original"], results["best_zero_shot"]
    recovered, info = results["recovered"], results["recovery"]
    ppl0, acc0 = original["perplexity.perplexity"], original["passkey.accuracy"]

    def row(label: str, values: dict) -> str:
        acc, ppl = values["passkey.accuracy"], values["perplexity.perplexity"]
        return (f"| {label} | {acc:.1%} ({100 * (acc - acc0):+.1f} pts) | {ppl:.2f} ({ppl / ppl0:.3f}x) |")

    name = probe["best_score"]
    settings = info["settings"]
    return [
        f"JRNP, the probe's best zero-shot choice of the same {probe['num_heads']} heads (`{name}`: the lowest cost, "
        f"relative perplexity increase + passkey drop) and that model after `hf-rankprune recover` "
        f"({info['steps']} steps of distillation from the original, {settings['batch_size']} x {settings['seq_len']} "
        f"tokens a step, {int(settings['retrieval_mix'] * 100)}% of them retrieval documents), side by side:",
        "",
        "| model | passkey accuracy | perplexity |",
        "|---|---|---|",
        f"| original | {acc0:.1%} | {ppl0:.2f} |",
        row("JRNP (the paper's score)", results["pruned"]),
        row(f"best zero-shot score: `{name}`", best),
        row(f"`{name}` + recovery", recovered),
    ]


def check_readme(block: str, readme: str) -> list[str]:
    """The lines where README.md's demo-results block differs from this run's `block` (empty: they agree)."""
    if BEGIN not in readme or END not in readme:
        return [f"README.md has no demo-results block ({BEGIN} ... {END})"]
    start = readme.index(BEGIN)
    shown = readme[start : readme.index(END, start) + len(END)].splitlines()
    fresh = block.splitlines()
    problems = [f"README: {a!r}\n  this run: {b!r}" for a, b in zip(shown, fresh) if a != b]
    if len(shown) != len(fresh):
        problems.append(f"README's block has {len(shown)} lines, this run's {len(fresh)}")
    return problems


def update_readme(block: str, readme: str) -> str:
    start = readme.index(BEGIN)
    end = readme.index(END, start) + len(END)
    return readme[:start] + block + readme[end:]


def _value(key: str, value: float) -> str:
    if "accuracy" in key:
        return f"{value:.1%}"
    if key.endswith("_bytes"):
        return f"{int(value):,}"
    return f"{value:.2f}"


def _speed(results: dict) -> str:
    low, high = results.get("speed.decode_tokens_per_s_min"), results.get("speed.decode_tokens_per_s_max")
    spread = f" ({low:.1f}-{high:.1f})" if low is not None and high is not None else ""
    return f"{results['speed.decode_tokens_per_s']:.1f}{spread}"


def summary_markdown(block: str, results: dict, seconds: float) -> str:
    original, pruned = results["original"], results["pruned"]
    speed = "speed.decode_tokens_per_s"
    return "\n".join([
        "# hf_rankprune demo",
        "",
        f"Model: the embedded demo model. Run time {seconds / 60:.1f} min.",
        "",
        block.replace(BEGIN + "\n", "").replace("\n" + END, ""),
        "",
        *([f"Decode speed on this machine (median of {int(original['speed.num_runs'])} runs, min-max in brackets): "
           f"{_speed(original)} -> {_speed(pruned)} tokens/s; hardware- and load-dependent, so not in README.md.",
           ""] if speed in original else []),
        *([f"Recovery ({results['recovery']['steps']} steps) took {results['recovery']['minutes']} min on this machine.",
           ""] if "recovery" in results else []),
        "Files: `analysis/report.md` (stratification, stability, figures), `probe/probe.md`, `pruned_model/` (JRNP), "
        "`best_zero_shot_model/`, `recovered_model/` (each loads with `AutoModelForCausalLM.from_pretrained` after "
        "`import hf_rankprune`; card in README.md).",
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "demo.yaml"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--update-readme", action="store_true",
                        help="write this run's figures into README.md instead of checking README.md against them")
    parser.add_argument("--readme-from", metavar="DIR", default=None,
                        help="no run: check (or with --update-readme write) README.md against the output of a finished "
                        "run of the demo recipe")  # fmt: skip
    args = parser.parse_args()
    if args.readme_from is not None:
        return _readme_step(block_from_output(Path(args.readme_from)), args.update_readme)
    check_output_dir(args.out, args.overwrite)
    if not (DEMO_MODEL_PATH / "config.json").is_file():
        print(f"error: the embedded demo model is missing at {DEMO_MODEL_PATH}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    recipe = hf_rankprune.load_recipe(args.recipe)
    pruner = hf_rankprune.RankPruner.from_recipe(recipe)
    evaluation = dict(recipe.evaluation or {})

    with atomic_output_dir(args.out, args.overwrite) as staging:
        print("[1/7] calibrating and analysing state ranks", flush=True)
        config = pruner.config
        samples = load_calibration_samples(config.data, pruner.tokenizer, config.num_samples, config.seq_len,
                                           config.seed)  # fmt: skip
        stats = pruner.calibrate(samples)
        analysis = write_report(stats, staging / "analysis")
        print(f"      {analysis['stratification']['low_heads']} low-rank / "
              f"{analysis['stratification']['high_heads']} high-rank heads", flush=True)  # fmt: skip
        print("[2/7] evaluating the original model", flush=True)
        original = pruner.evaluate()  # the recipe's tasks and settings
        print("[3/7] probing which heads the model can spare (rank groups, random, JRNP, every importance score)",
              flush=True)  # fmt: skip
        probe_kwargs = {k: v for k, v in evaluation.items() if k not in ("tasks", "context_length")}
        fresh_model = lambda: load_model_and_tokenizer(str(DEMO_MODEL_PATH))[0]  # noqa: E731
        probe = run_probe(pruner.model, pruner.tokenizer, stats, config, samples=samples, eval_kwargs=probe_kwargs,
                          progress=True, model_factory=fresh_model)  # fmt: skip
        (staging / "probe").mkdir()
        write_probe(probe, staging / "probe")
        print(f"      {probe['verdict']}", flush=True)
        print("[4/7] pruning with the demo recipe's settings (JRNP), evaluating and saving the pruned model", flush=True)
        pruner.prune()
        pruned = pruner.evaluate()
        pruner.save_pretrained(staging / "pruned_model")
        best = probe["best_score"]
        print(f"[5/7] pruning with the probe's best zero-shot choice ({best}) and saving that model", flush=True)
        best_config = {**probe_variants(config, probe["num_heads"], probe["seeds"]),
                       **score_variants(config, probe["num_heads"], probe["scores"])}[best]  # fmt: skip
        best_pruner = hf_rankprune.RankPruner(fresh_model(), pruner.tokenizer, best_config, model_name=DEMO_MODEL_NAME)
        best_pruner.source_model = str(DEMO_MODEL_PATH)
        if best_config.needs_rank_stats():
            best_pruner.load_stats(stats)
        else:
            best_pruner.measure(samples, progress=False, verbose=False)
        best_pruner.save_pretrained(staging / "best_zero_shot_model")
        print(f"[6/7] recovering it by distillation from the original ({recipe.recovery.steps} steps)", flush=True)
        recovery_start = time.perf_counter()
        recovered = recover(staging / "best_zero_shot_model", staging / "recovered_model", recipe.recovery)
        recovery_minutes = (time.perf_counter() - recovery_start) / 60
        print("[7/7] evaluating the recovered model", flush=True)
        recovered_model, _ = load_model_and_tokenizer(str(staging / "recovered_model"))
        results = {"original": original, "pruned": pruned, "best_zero_shot": probe["rows"][best],
                   "recovered": evaluate_model(recovered_model, pruner.tokenizer, ["perplexity", "passkey"], progress=True,
                                               **probe_kwargs),
                   "recovery": {**recovered.info, "minutes": round(recovery_minutes, 1)}}  # fmt: skip
        (staging / "evaluation.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        block = results_markdown(analysis, results, probe, pruner.pruning_plan)
        summary = summary_markdown(block, results, time.perf_counter() - start)
        (staging / "summary.md").write_text(summary)
        (staging / "readme_results.md").write_text(block + "\n")
    print(summary)
    if Path(args.recipe).resolve() != (REPO / "recipes" / "demo.yaml").resolve():
        return 0  # README.md shows the demo recipe's run only
    return _readme_step(block, args.update_readme)


def block_from_output(folder: Path) -> str:
    """The README block of a finished run, from the files it left (analysis, evaluation, probe, plan)."""
    from hf_rankprune.plan import PrunePlan

    analysis = json.loads((folder / "analysis" / "report.json").read_text())
    results = json.loads((folder / "evaluation.json").read_text())
    probe = json.loads((folder / "probe" / "probe.json").read_text())
    plan = PrunePlan.from_json_file(folder / "pruned_model" / "prune_plan.json")
    return results_markdown(analysis, results, probe, plan)


def _readme_step(block: str, update: bool) -> int:
    readme = README.read_text(encoding="utf-8")
    if update:
        README.write_text(update_readme(block, readme), encoding="utf-8")
        print("README.md: demo results updated from this run")
        return 0
    problems = check_readme(block, readme)
    if problems:
        print("README.md does not match this run (`python scripts/run_demo.py --update-readme` rewrites it):",
              *problems, sep="\n", file=sys.stderr)  # fmt: skip
        return 1
    print("README.md: every demo figure matches this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
