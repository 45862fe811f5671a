"""Head scores side by side on the embedded demo model: JRNP vs the head-importance scores vs random.

Every variant removes the same number of heads (default 12 of the demo model's 32, the demo recipe's 37.5% of the
state) under the demo recipe's global budget and calibration (16 samples x 512 built-in tokens), and is evaluated in
the same run with `hf_rankprune.evaluation.evaluate_model` (perplexity on the packaged held-out text, passkey at 512
and 1024 tokens x 5 depths x --num-keys keys). Importance scores remove their lowest (least important) heads.

    .venv/bin/python benchmarks/scores.py                       # all variants, 10 keys per (length, depth)
    .venv/bin/python benchmarks/scores.py --num-keys 5 --greedy-samples 8 --json scores.json
    .venv/bin/python benchmarks/scores.py --variants original,kl_text,kl,kl:retrieval_mix=0.5:answer_weight=100

The importance scores measured on data (kl, kl_greedy, taylor, activation) run at the config's default retrieval mix
(`retrieval_mix`, `answer_weight`: a share of the calibration samples replaced by retrieval documents, see
hf_rankprune.data.retrieval); their `_text` variants (kl_text, ...) measure on the calibration text only (mix 0).
A variant NAME:setting=value:... overrides settings of variant NAME (for sweeps of the mix and the weight).

Cost on 2 CPU cores: kl one shot takes one forward per head per batch (32 heads x 4 batches of 4 x 512 tokens),
kl greedy about (removed heads) x (remaining heads) x batches: it dominates the run (--greedy-samples lowers it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12, help="value heads removed by every variant (default 12)")
    parser.add_argument("--num-keys", type=int, default=10, help="passkey keys per (length, depth) (default 10)")
    parser.add_argument("--lengths", default="512,1024", help="passkey context lengths (default 512,1024)")
    parser.add_argument("--greedy-samples", type=int, default=None,
                        help="calibration samples of kl greedy (default: the recipe's 16)")  # fmt: skip
    parser.add_argument("--variants", default="original,jrnp,kl_text,kl,kl_greedy_text,kl_greedy,taylor_text,taylor,"
                        "activation_text,activation,decay,random",
                        help="comma-separated subset to run")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on shared cores)")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hf_rankprune import RankPruner
    from hf_rankprune.config import DATA_SCORES, value_type
    from hf_rankprune.data import load_calibration_samples
    from hf_rankprune.evaluation import evaluate_model
    from hf_rankprune.loading import DEMO_MODEL_PATH, load_model_and_tokenizer
    from hf_rankprune.output_scores import decay_scores, with_retrieval
    from hf_rankprune.recipe import load_recipe
    from hf_rankprune.report import decay_rank_correlation

    lengths = tuple(int(x) for x in args.lengths.split(","))
    base_model, tokenizer = load_model_and_tokenizer(str(DEMO_MODEL_PATH))
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml").config.replace(num_heads=args.heads)  # clears the ratio
    importance = recipe.replace(direction=None)  # each importance score's own direction: the lowest go
    greedy = importance.replace(score="kl", kl_greedy=True)
    if args.greedy_samples is not None:
        greedy = greedy.replace(num_samples=args.greedy_samples)
    variants = {
        "original": None,
        "jrnp": recipe,
        "kl": importance.replace(score="kl"),
        "kl_greedy": greedy,
        "taylor": importance.replace(score="taylor"),
        "activation": importance.replace(score="activation"),
        "decay": importance.replace(score="decay"),
        "random": recipe.replace(direction="random", seed=0),
    }
    for name in ("kl", "kl_greedy", "taylor", "activation"):
        variants[f"{name}_text"] = variants[name].replace(retrieval_mix=0.0)
    chosen = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted({name.split(":")[0] for name in chosen} - set(variants))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(variants)}")
    fields = {spec.name: spec for spec in dataclasses.fields(recipe)}
    for name in chosen:
        base, *overrides = name.split(":")
        if overrides:
            values = {}
            for item in overrides:
                key, _, text = item.partition("=")
                if key not in fields:
                    parser.error(f"variant {name!r}: unknown setting {key!r}")
                kind = value_type(fields[key])
                values[key] = (text.lower() in ("1", "true", "yes")) if kind is bool else kind(text)
            variants[name] = variants[base].replace(**values)

    def evaluate(model):
        return evaluate_model(model, tokenizer, ["perplexity", "passkey"], lengths=lengths, num_keys=args.num_keys)

    stats = None
    rows = {}
    for name in chosen:
        config = variants[name]
        print(f"== {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        model = copy.deepcopy(base_model)
        row: dict = {}
        if config is not None:
            pruner = RankPruner(model, tokenizer, config, model_name="demo")
            if config.needs_rank_stats():
                if stats is None:
                    stats = pruner.calibrate(progress=False)
                else:
                    pruner.load_stats(stats)
            elif config.score in DATA_SCORES:
                # the mix is built here with the tokenizer (with_retrieval: the same as importance_scores does)
                samples = load_calibration_samples(config.data, tokenizer, config.num_samples, config.seq_len,
                                                   config.seed)  # fmt: skip
                samples, mixed = with_retrieval(samples, tokenizer, config)
                pruner.measure_importance(samples, progress=False)
                row.update(retrieval_samples=mixed.get("retrieval_samples", 0), mix=config.retrieval_mix,
                           answer_weight=config.answer_weight if config.score != "activation" else None)  # fmt: skip
            plan = pruner.plan()
            pruner.prune()
            measured = plan.settings.get("score_measured") or {}
            row.update(
                removed=plan.num_removed_value_heads,
                direction=plan.settings["direction"],
                samples=plan.settings.get("calibration_samples"),
                forwards=measured.get("forwards", len(range(0, stats.num_samples, config.batch_size)) if stats else None),
                backwards=measured.get("backwards", 0),
                removed_heads={layer.layer: layer.removed_value_heads for layer in plan.layers},
            )
        row["score_seconds"] = round(time.perf_counter() - start, 1)
        row.update(evaluate(model))
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows[name] = row
        print(f"   {name}: perplexity {row['perplexity.perplexity']:.2f}, passkey {row['passkey.accuracy']:.2f} "
              f"({row['seconds']} s)", file=sys.stderr, flush=True)  # fmt: skip

    correlation = None
    if stats is not None:
        correlation = decay_rank_correlation(stats, decay_scores(base_model, verbose=False).scores)
    original = rows.get("original", {}).get("perplexity.perplexity")
    any_row = next(iter(rows.values()))
    examples = any_row.get("passkey.num_examples")
    print(f"\nDemo model, {args.heads} of 32 heads removed (global budget); perplexity on "
          f"{any_row.get('perplexity.num_tokens')} held-out tokens, passkey on {examples} examples "
          f"({', '.join(map(str, lengths))} tokens x 5 depths x {args.num_keys} keys)\n")  # fmt: skip
    header = ["heads removed by", "perplexity", "x original", "passkey"]
    header += [f"passkey@{length}" for length in lengths]
    header += ["scoring passes (fwd/bwd) on samples", "retrieval docs (mix, answer weight)", "seconds"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, row in rows.items():
        ppl = row["perplexity.perplexity"]
        ratio = f"{ppl / original:.3f}" if original else "n/a"
        cost = "" if name == "original" else f"{row['forwards']}/{row['backwards']} on {row['samples'] or 0}"
        cells = [name, f"{ppl:.2f}", ratio, f"{row['passkey.accuracy']:.2f}"]
        cells += [f"{row.get(f'passkey.accuracy@{length}', float('nan')):.2f}" for length in lengths]
        mix = (f"{row['retrieval_samples']} ({row['mix']:g}, {row['answer_weight'] if row['answer_weight'] is not None else '-'})"
               if "retrieval_samples" in row else "")  # fmt: skip
        cells += [cost, mix, f"{row['seconds']}"]
        print("| " + " | ".join(cells) + " |")
    if correlation is not None:
        print(f"\nSpearman rho, decay score vs calibrated mean rank over the 32 heads: "
              f"{correlation['spearman_with_mean_rank']:.3f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "decay_rank": correlation}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
