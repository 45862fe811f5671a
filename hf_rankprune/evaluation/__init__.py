"""Evaluation of (pruned) causal LMs with Hugging Face `evaluate` metrics shipped in the package.

    from hf_rankprune.evaluation import evaluate_model
    results = evaluate_model(model, tokenizer, tasks=("perplexity", "passkey", "memory", "speed"))
    results["passkey.accuracy@1024"], results["memory.linear_state_bytes"]

Tasks are registered in `tasks.py` (`register_task`), the one list the CLI, recipes and model cards read. Metric
modules live in `metrics/<name>/<name>.py` (`evaluate.Metric` subclasses) and load offline with `load_metric(name)`.
`passkey` holds the passkey-document generator shared with the demo model's training.
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
    "register_task",
    "registered_tasks",
    "results_table",
    "token_log_probs",
]

_FROM_TASKS = ("register_task", "registered_tasks")


def __getattr__(name):  # lazy: `passkey` and `texts` import without `evaluate`
    if name == "KNOWN_TASKS":  # the registered task names, read when asked for
        from .tasks import task_names

        return task_names()
    if name in _FROM_TASKS:
        from . import tasks

        return getattr(tasks, name)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
