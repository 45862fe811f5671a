"""Decoding speed: the median over runs of generated tokens per second (decode phase only)."""

import statistics

import datasets
import evaluate

_DESCRIPTION = "Median decode throughput over runs, tokens/s = num_tokens / seconds of each run."
_KWARGS_DESCRIPTION = """
Args (one entry per timed run):
    num_tokens: tokens decoded in the run.
    seconds: wall-clock seconds of the run's decode phase.
Returns:
    decode_tokens_per_s (median over runs), decode_tokens_per_s_min / _max (the spread over runs),
    decode_spread ((max - min) / median: above 0.25 the runs disagree, e.g. on a busy machine), decode_ms_per_token
    (median), num_runs.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Speed(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"num_tokens": datasets.Value("int64"), "seconds": datasets.Value("float64")}),
        )

    def _compute(self, num_tokens, seconds):
        if not num_tokens:
            raise ValueError("speed needs at least one run")
        if any(s <= 0 for s in seconds) or any(n <= 0 for n in num_tokens):
            raise ValueError("each run needs num_tokens > 0 and seconds > 0")
        rates = [n / s for n, s in zip(num_tokens, seconds)]
        return {
            "decode_tokens_per_s": statistics.median(rates),
            "decode_tokens_per_s_min": min(rates),
            "decode_tokens_per_s_max": max(rates),
            "decode_spread": (max(rates) - min(rates)) / statistics.median(rates),
            "decode_ms_per_token": statistics.median(1000.0 * s / n for n, s in zip(num_tokens, seconds)),
            "num_runs": len(rates),
        }
