"""Passkey retrieval (needle in a haystack) accuracy: exact match of the digits a model generated.

A prediction is the model's continuation of the prompt; its first run of digits must equal the reference
key exactly. With `lengths` and/or `depths` (one per example) the accuracy is also broken down per context
length (`accuracy@512`) and per needle depth (`accuracy@depth0.5`).
"""

import re

import datasets
import evaluate

_DESCRIPTION = "Exact-match accuracy of the first run of digits in each prediction against the reference key."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated continuations (strings).
    references: the pass keys (strings of digits).
    lengths: optional, the context length of each example, for a per-length breakdown.
    depths: optional, the needle depth of each example, for a per-depth breakdown.
Returns:
    accuracy, num_examples, and accuracy@<length> / accuracy@depth<depth> when given.
Example:
    >>> metric.compute(predictions=[" 12345.", "9"], references=["12345", "98"])["accuracy"]
    0.5
"""

_DIGITS = re.compile(r"\d+")


def _key(text):
    match = _DIGITS.search(text or "")
    return match.group(0) if match else ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Passkey(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="Mohtashami & Jaggi, Landmark Attention (2023): the passkey retrieval task.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, lengths=None, depths=None):
        if not predictions:
            raise ValueError("passkey needs at least one example")
        hits = [_key(p) == _key(r) and _key(r) != "" for p, r in zip(predictions, references)]
        result = {"accuracy": sum(hits) / len(hits), "num_examples": len(hits)}
        for name, groups in (("", lengths), ("depth", depths)):
            if groups is None:
                continue
            if len(groups) != len(hits):
                raise ValueError(f"{name or 'lengths'}: {len(groups)} values for {len(hits)} examples")
            for value in sorted(set(groups)):
                chosen = [h for h, g in zip(hits, groups) if g == value]
                label = f"{value:g}" if isinstance(value, float) else str(value)
                result[f"accuracy@{name}{label}"] = sum(chosen) / len(chosen)
        return result
