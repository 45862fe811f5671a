"""The issue-15 targets on the embedded demo model, side by side in one run: zero-shot scores, then recovery.

Every variant removes the same heads count (default 12 of the demo model's 32) under the demo recipe's global budget
and is evaluated with `hf_rankprune.evaluation.evaluate_model` (perplexity on the packaged held-out text, passkey at
512 and 1024 tokens x 5 depths x --num-keys keys). The recovered rows are the pruned rows after
`hf_rankprune.recovery.distill` from the original model with the demo's recovery settings (`DEMO_RECOVERY`, or the
flags). Targets: zero-shot kl perplexity <= 1.12x the original with passkey >= 0.90; recovered <= 1.05x, >= 0.95.

    .venv/bin/python benchmarks/recovery.py                          # jrnp, kl, and both recovered
    .venv/bin/python benchmarks/recovery.py --variants kl --steps 100 --json recovery.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"zero-shot": (1.12, 0.90), "recovered": (1.05, 0.95)}


def main(argv: list[str] | None = None) -> int:
    from hf_rankprune.cli import add_recovery_arguments, given_recovery_settings
    from hf_rankprune.recovery import DEMO_RECOVERY, RecoveryConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12, help="value heads removed by every variant (default 12)")
    parser.add_argument("--num-keys", type=int, default=10, help="passkey keys per (length, depth) (default 10)")
    parser.add_argument("--variants", default="jrnp,kl", help="comma-separated pruned variants: jrnp, kl, taylor")
    parser.add_argument("--no-recovery", action="store_true", help="zero-shot rows only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on shared cores)")
    parser.add_argument("--json", default=None, help="write the results here too")
    add_recovery_arguments(parser, RecoveryConfig(**DEMO_RECOVERY))  # `hf-rankprune recover`'s, the demo's defaults
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hf_rankprune import RankPruner
    from hf_rankprune.evaluation import evaluate_model
    from hf_rankprune.loading import DEMO_MODEL_PATH, load_model_and_tokenizer
    from hf_rankprune.recipe import load_recipe
    from hf_rankprune.recovery import distill, training_samples

    base_model, tokenizer = load_model_and_tokenizer(str(DEMO_MODEL_PATH))
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml").config.replace(num_heads=args.heads)
    configs = {"jrnp": recipe, "kl": recipe.replace(score="kl", direction=None),
               "taylor": recipe.replace(score="taylor", direction=None)}  # fmt: skip
    recovery = RecoveryConfig(**DEMO_RECOVERY).replace(**given_recovery_settings(args))
    samples = None if args.no_recovery else training_samples(tokenizer, recovery)

    def evaluate(model) -> dict:
        return evaluate_model(model, tokenizer, ["perplexity", "passkey"], lengths=(512, 1024), num_keys=args.num_keys)

    rows: dict[str, dict] = {"original": evaluate(base_model)}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        print(f"== {name}", file=sys.stderr, flush=True)
        model = copy.deepcopy(base_model)
        pruner = RankPruner(model, tokenizer, configs[name], model_name="demo")
        pruner.prune()
        rows[name] = evaluate(model)
        if args.no_recovery:
            continue
        start = time.perf_counter()
        info = distill(model, base_model, samples, recovery, progress=False)
        rows[f"{name} + recovery"] = {**evaluate(model), "recovery_seconds": round(time.perf_counter() - start, 1),
                                      "final_loss": info["loss_history"][-1]["loss"]}  # fmt: skip
        for label in (name, f"{name} + recovery"):
            print(f"   {label}: perplexity {rows[label]['perplexity.perplexity']:.2f}, passkey "
                  f"{rows[label]['passkey.accuracy']:.2f}", file=sys.stderr, flush=True)  # fmt: skip

    original = rows["original"]
    ppl0 = original["perplexity.perplexity"]
    print(f"\nDemo model, {args.heads} of 32 heads removed; perplexity on {int(original['perplexity.num_tokens']):,} "
          f"held-out tokens, passkey on {int(original['passkey.num_examples'])} examples; recovery: {recovery.steps} "
          f"steps x {recovery.batch_size} x {recovery.seq_len} tokens, lr {recovery.learning_rate}, {recovery.method}, "
          f"retrieval mix {recovery.retrieval_mix}\n")  # fmt: skip
    print("| variant | perplexity | x original | passkey | target | met | recovery s |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        ppl, acc = row["perplexity.perplexity"], row["passkey.accuracy"]
        kind = "recovered" if name.endswith("recovery") else "zero-shot" if name == "kl" else None
        target = f"<= {TARGETS[kind][0]}x, >= {TARGETS[kind][1]}" if kind else ""
        met = ("yes" if ppl / ppl0 <= TARGETS[kind][0] and acc >= TARGETS[kind][1] else "no") if kind else ""
        print(f"| {name} | {ppl:.2f} | {ppl / ppl0:.3f} | {acc:.2f} | {target} | {met} | "
              f"{row.get('recovery_seconds', '')} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "recovery": recovery.to_dict()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
