"""Retrieval calibration documents: passkey-like synthetic contexts for the output-aware head scores.

A document hides a 5-digit key in filler at a random depth and asks for it at the end, built by the same builder as
the passkey evaluation (`hf_rankprune.evaluation.passkey.make_passkey_sample`)::

    There is an important info hidden inside a lot of irrelevant text. ... The pass key is 61842. Remember it. ...
    What is the pass key? The pass key is 61842

Each document is one calibration sample of exactly ``seq_len`` tokens (prompt + answer, then the few tokens the
filler granularity leaves padded with eos) and carries per-token weights (`CalibrationSamples.weights`: the weight of
the prediction made at each position): ``answer_weight`` on the predictions of the answer tokens (" 61842": what
retrieval must produce), 1 on the predictions of the rest of the document, 0 after the answer (the padding).

Kept apart from the evaluation's passkeys, so that scoring never sees an evaluation example:

- keys: drawn from their own seed stream (``random.Random("hf_rankprune.retrieval_calibration:<seed>")``, not the
  evaluation's integer seeds ``EVAL_SEED_OFFSET + seed``), and every key the evaluation would use with seeds
  0..EXCLUDED_EVAL_SEEDS-1 in its first EXCLUDED_EVAL_KEYS examples (`evaluation_keys`; the evaluation's default is
  seed 0, 100 examples) is skipped, so no calibration key is an evaluation key;
- filler: `RETRIEVAL_FILLER`, sentences of the classic filler's style that the evaluation's filler
  (`DEFAULT_FILLER`) does not contain, cycled from a random sentence;
- depth: uniform in [0, 1] (the evaluation's depths are a fixed grid), length: the calibration ``seq_len``.

`mix_retrieval` replaces a fraction of a sample set by such documents (the output-aware scores' `retrieval_mix`).
"""

from __future__ import annotations

import functools
import random
from typing import Any

import torch

from ..errors import CalibrationDataError
from .samples import CalibrationSamples

__all__ = [
    "RETRIEVAL_CATEGORY",
    "RETRIEVAL_FILLER",
    "mix_retrieval",
    "retrieval_count",
    "retrieval_documents",
]

RETRIEVAL_CATEGORY = "retrieval"
RETRIEVAL_SEED = "hf_rankprune.retrieval_calibration"
NUM_DIGITS = 5  # the evaluation's default key length
EXCLUDED_EVAL_SEEDS = 100  # evaluation seeds whose keys calibration never uses ...
EXCLUDED_EVAL_KEYS = 200  # ... in their first this many examples
# Plain sentences in the style of the classic filler, none of which is in the evaluation's DEFAULT_FILLER.
RETRIEVAL_FILLER = (
    "The river is wide.",
    "The night is dark.",
    "The road is long.",
    "The snow is white.",
    "The sea is calm.",
    "Here we are again.",
    "The wind is cold.",
    "The tree is tall.",
    "Over and over again.",
    "The stone is grey.",
    "The moon is bright.",
    "Now we go home.",
)


@functools.lru_cache(maxsize=1)
def excluded_keys() -> frozenset[str]:
    """The keys of the evaluation's first EXCLUDED_EVAL_KEYS examples for seeds 0..EXCLUDED_EVAL_SEEDS-1."""
    from ..evaluation.passkey import evaluation_keys

    return frozenset(key for seed in range(EXCLUDED_EVAL_SEEDS) for key in evaluation_keys(EXCLUDED_EVAL_KEYS, seed))


def _key(rng: random.Random) -> str:
    from ..evaluation.passkey import random_key

    excluded = excluded_keys()
    while True:
        key = random_key(rng, NUM_DIGITS)
        if key not in excluded:
            return key


def retrieval_documents(tokenizer: Any, count: int, seq_len: int, seed: int = 0,
                        answer_weight: float = 1.0) -> CalibrationSamples:  # fmt: skip
    """``count`` retrieval documents of exactly ``seq_len`` tokens (category "retrieval") with their token weights,
    deterministic in ``seed``. A ``seq_len`` too short for a document raises CalibrationDataError."""
    return _documents(tokenizer, count, seq_len, seed, answer_weight)[0]


def _documents(tokenizer: Any, count: int, seq_len: int, seed: int,
               answer_weight: float) -> tuple[CalibrationSamples, int]:  # fmt: skip
    from ..evaluation.passkey import make_passkey_sample

    if not hasattr(tokenizer, "encode"):
        raise CalibrationDataError("retrieval documents need a tokenizer with encode(text, add_special_tokens=False).")
    rng = random.Random(f"{RETRIEVAL_SEED}:{seed}")
    pad = getattr(tokenizer, "eos_token_id", None)
    pad = 0 if pad is None else int(pad)
    ids = torch.full((count, seq_len), pad, dtype=torch.long)
    weights = torch.zeros(count, seq_len)
    answer_tokens = 0
    for row in range(count):
        key, depth = _key(rng), rng.random()
        try:
            sample = make_passkey_sample(tokenizer, seq_len, depth, key, RETRIEVAL_FILLER, rng=rng)
        except ValueError as error:
            raise CalibrationDataError(f"seq_len={seq_len} is too short for a retrieval document: {error}.") from None
        prompt = tokenizer.encode(sample.prompt, add_special_tokens=False)
        answer = tokenizer.encode(sample.answer, add_special_tokens=False)
        tokens = (prompt + answer)[:seq_len]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        # position t's weight weighs its prediction of token t + 1: the prompt's predictions 1, the answer's
        # answer_weight, and nothing after the answer's last token (the padding) counts
        weights[row, : len(prompt) - 1] = 1.0
        weights[row, len(prompt) - 1 : len(tokens) - 1] = float(answer_weight)
        answer_tokens += max(0, len(tokens) - len(prompt))
    return CalibrationSamples(ids, [RETRIEVAL_CATEGORY] * count, weights), answer_tokens


def retrieval_count(num_samples: int, fraction: float) -> int:
    """How many of ``num_samples`` a ``fraction`` makes retrieval documents: fraction x num_samples rounded half up,
    at least one when the fraction is above 0."""
    if fraction <= 0:
        return 0
    return min(num_samples, max(1, int(fraction * num_samples + 0.5)))


def mix_retrieval(samples: CalibrationSamples, tokenizer: Any, fraction: float, answer_weight: float,
                  seed: int = 0) -> tuple[CalibrationSamples, dict[str, Any]]:  # fmt: skip
    """``samples`` with `retrieval_count(len(samples), fraction)` of them replaced by retrieval documents of the
    same length: the first len - k rows are kept (a prefix covers the categories evenly) and the k documents are
    interleaved evenly among them, so every batch gets its share. Returns the mixed samples (text rows weigh 1, or
    keep the weights they have) and what was mixed in (for the scores' `measured` record)."""
    n, seq_len = len(samples), samples.seq_len
    k = retrieval_count(n, fraction)
    info: dict[str, Any] = {"retrieval_mix": float(fraction), "answer_weight": float(answer_weight)}
    if k == 0:
        info["retrieval_samples"] = 0
        return samples, info
    documents, answer_tokens = _documents(tokenizer, k, seq_len, seed, answer_weight)
    text_weights = samples.weights if samples.weights is not None else torch.ones(samples.input_ids.shape)
    rows = [((i + 0.5) / (n - k), 0, i) for i in range(n - k)] + [((j + 0.5) / k, 1, j) for j in range(k)]
    rows.sort()
    ids, weights, categories = [], [], []
    for _, is_doc, index in rows:
        source_ids, source_weights = (documents.input_ids, documents.weights) if is_doc else (samples.input_ids,
                                                                                              text_weights)  # fmt: skip
        ids.append(source_ids[index])
        weights.append(source_weights[index])
        categories.append(RETRIEVAL_CATEGORY if is_doc else samples.categories[index])
    info.update(retrieval_samples=k, answer_tokens=answer_tokens, retrieval_seed=seed)
    return CalibrationSamples(torch.stack(ids), categories, torch.stack(weights)), info
