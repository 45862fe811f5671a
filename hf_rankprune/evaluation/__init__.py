"""Evaluation of (pruned) causal LMs with Hugging Face `evaluate` metrics shipped in the package.

    from hf_rankprune.evaluation import evaluate_model
    results = evaluate_model(model, tokenizer, tasks=("perplexity", "passkey", "memory", "speed"))
    results["passkey.accuracy@1024"], results["memory.linear_state_bytes"]

Metric modules live in `metrics/<name>/<name>.py` (`evaluate.Metric` subclasses) and load offline with
`load_metric(name)`. `passkey` holds the passkey-document generator shared with the demo model's training.
"""

from __future__ import annotations

__all__ = [
    "KNOWN_TASKS",
    "decode_runs",
    "evaluate_model",
    "format_value",
    "greedy_generate",
    "load_metric",
    "memory_layers",
    "results_table",
    "token_log_probs",
]


def __getattr__(name):  # lazy: `passkey` and `texts` import without `evaluate`
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
