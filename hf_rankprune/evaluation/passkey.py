"""Passkey retrieval ("needle in a haystack") documents: one generator for training and evaluation.

A document hides a number (the pass key) at a chosen depth of filler text and asks for it at the end::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. ...
    The grass is green. The sky is blue. ... The pass key is 48213. Remember it. 48213 is the pass key.
    ... The grass is green. ... What is the pass key? The pass key is| 48213

`prompt` ends just before the answer; `answer` is `" " + key`. Lengths are measured in tokens of the
tokenizer given, so a document of `length` tokens fits a model context of that size (prompt plus answer).
Training and evaluation draw keys from different seeds (`evaluation_samples` derives its own, `evaluation_keys`);
the retrieval calibration documents of the output-aware head scores (`hf_rankprune.data.retrieval`) are built by
`make_passkey_sample` too, from their own seeds and filler, and never use a key `evaluation_keys` gives.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
QUESTION = "What is the pass key? The pass key is"
# The classic filler of the passkey benchmark (Mohtashami & Jaggi, 2023).
DEFAULT_FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)


@dataclass(frozen=True)
class PasskeySample:
    prompt: str
    answer: str  # " " + key: what a model should continue the prompt with
    key: str
    depth: float
    length: int  # target length in tokens (prompt + answer)


def needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def random_key(rng: random.Random, num_digits: int = 5) -> str:
    """A `num_digits`-digit number without a leading zero."""
    return str(rng.randint(10 ** (num_digits - 1), 10**num_digits - 1))


def _count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def make_passkey_sample(
    tokenizer,
    length: int,
    depth: float,
    key: str,
    filler: Sequence[str] = DEFAULT_FILLER,
    *,
    rng: random.Random | None = None,
) -> PasskeySample:
    """A document of at most `length` tokens (prompt + answer, as close as filler granularity allows).

    `filler` is a sequence of sentences, cycled in order (the classic repeated filler), or, with `rng`,
    a pool of sentences that a random contiguous stretch is taken from (natural-text filler).
    `depth` in [0, 1] is the fraction of the filler placed before the needle.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if not filler:
        raise ValueError("filler must not be empty")
    answer = " " + key
    fixed = _count(tokenizer, f"{INTRO} {needle(key)} {QUESTION}") + _count(tokenizer, answer)
    budget = length - fixed
    if budget < 0:
        raise ValueError(f"length {length} is too short for a passkey document (needs > {fixed} tokens)")
    start = rng.randrange(len(filler)) if rng is not None else 0

    def build(n: int) -> str:
        sentences = [filler[(start + i) % len(filler)] for i in range(n)]
        before = int(round(depth * n))
        parts = [INTRO, *sentences[:before], needle(key), *sentences[before:], QUESTION]
        return " ".join(parts)

    # Grow the filler by doubling, then binary-search the largest count that fits.
    lo, hi = 0, 1
    while _count(tokenizer, build(hi)) + _count(tokenizer, answer) <= length:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _count(tokenizer, build(mid)) + _count(tokenizer, answer) <= length:
            lo = mid
        else:
            hi = mid
    return PasskeySample(prompt=build(lo), answer=answer, key=key, depth=float(depth), length=int(length))


EVAL_SEED_OFFSET = 1_000_003  # evaluation keys never come from the seeds that training uses


def evaluation_keys(count: int, seed: int = 0, num_digits: int = 5) -> list[str]:
    """The first `count` keys of the evaluation with `seed`, in the order `evaluation_samples` uses them (the key
    sequence depends only on the seed and the digit count, not on the lengths, depths or tokenizer)."""
    rng = random.Random(EVAL_SEED_OFFSET + seed)
    return [random_key(rng, num_digits) for _ in range(count)]


def evaluation_samples(
    tokenizer,
    lengths: Sequence[int] = (512, 1024),
    depths: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    num_keys: int = 10,
    seed: int = 0,
    num_digits: int = 5,
    filler: Sequence[str] = DEFAULT_FILLER,
) -> list[PasskeySample]:
    """The length x depth x key grid of an evaluation, deterministic in `seed`."""
    keys = iter(evaluation_keys(len(lengths) * len(depths) * num_keys, seed, num_digits))
    samples = []
    for length in lengths:
        for depth in depths:
            for _ in range(num_keys):
                samples.append(make_passkey_sample(tokenizer, int(length), float(depth), next(keys), filler))
    return samples


_DIGITS = re.compile(r"\d+")


def extract_key(text: str) -> str:
    """The first run of digits in a model's continuation ("" if none)."""
    match = _DIGITS.search(text)
    return match.group(0) if match else ""
