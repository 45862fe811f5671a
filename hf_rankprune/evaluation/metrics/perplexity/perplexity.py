"""Perplexity from token log-probabilities: exp(mean negative log-likelihood over all scored tokens).

The model-side work (windowing held-out text, scoring tokens) is `hf_rankprune.evaluation.token_log_probs`;
this metric only aggregates, so it is exact and model-free.
"""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Perplexity = exp(-(1/N) sum_i log p(x_i | x_<i)) over all N scored tokens of all windows."
_KWARGS_DESCRIPTION = """
Args:
    log_probs: one list per window (or text) of natural-log probabilities of the scored tokens.
Returns:
    perplexity: exp of the mean negative log-likelihood per token.
    mean_nll: the mean negative log-likelihood per token (nats).
    num_tokens: the number of tokens scored.
Example:
    >>> metric = evaluate.load("hf_rankprune/evaluation/metrics/perplexity")
    >>> metric.compute(log_probs=[[-1.0, -2.0], [-3.0]])["mean_nll"]
    2.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"log_probs": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, log_probs):
        values = [np.asarray(lp, dtype=np.float64).reshape(-1) for lp in log_probs]
        flat = np.concatenate(values) if values else np.zeros(0)
        if flat.size == 0:
            raise ValueError("perplexity needs at least one scored token")
        if np.any(flat > 1e-9):
            raise ValueError("log_probs must be log-probabilities (<= 0)")
        mean_nll = float(-flat.mean())
        return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "num_tokens": int(flat.size)}
