"""The builtin calibration suite: seeded synthetic text that needs no network, one generator per category.

    technical          technical prose: Python's own help topics (``pydoc_data.topics``)
    math               generated arithmetic word problems with worked solutions (seeded generator)
    long_context       long documents made of several help topics and math problems concatenated
    repetition_char    one rare character repeated over the whole sample (adversarial, paper App. D)
    repetition_number  one number repeated over the whole sample ("4821 4821 4821 ...")

`BUILTIN_CATEGORY_MAP` is the one place a category is defined; the suite, the spec grammar and `builtin_texts` all
read it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import CalibrationDataError
from .windows import encode, pick_windows, token_stream

__all__ = [
    "BUILTIN_CATEGORIES",
    "BUILTIN_CATEGORY_MAP",
    "BuiltinCategory",
    "builtin_category",
    "builtin_texts",
    "builtin_windows",
]

_RARE_CHARS = ("§", "ж", "¶", "Ω", "ψ", "¤", "µ", "ß")
_DOCUMENT_SEED = 0xD0C  # mixed into a category's document seed, apart from the seeds of its windows


@dataclass(frozen=True)
class BuiltinCategory:
    """How one builtin category makes its text.

    ``documents(rng, min_chars)``: its endless documents (``min_chars``: the length of long_context documents).
    ``unit(rng)``: set for the repetition categories, whose samples tile the token ids of one unit instead of
    cutting documents, so they are exactly periodic whatever the tokenizer.
    """

    documents: Callable[[np.random.Generator, int], Iterator[str]]
    unit: Callable[[np.random.Generator], str] | None = None


def builtin_category(name: str) -> BuiltinCategory:
    """The category called ``name``; an unknown name is an error listing the known ones."""
    if name not in BUILTIN_CATEGORY_MAP:
        raise CalibrationDataError(
            f"Unknown builtin category {name!r}: known categories are {', '.join(BUILTIN_CATEGORIES)}."
        )
    return BUILTIN_CATEGORY_MAP[name]


def _document_rng(category: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8")), _DOCUMENT_SEED])


def builtin_texts(category: str, num_docs: int, seed: int = 0, min_chars: int = 16384) -> list[str]:
    """The first ``num_docs`` documents the builtin ``category`` draws from (``min_chars``: long_context length).

    For the repetition categories, one document is one unit repeated ("§§§..." / "4821 4821 ...") to ``min_chars``.
    """
    stream = builtin_category(category).documents(_document_rng(category, seed), min_chars)
    return [next(stream) for _ in range(num_docs)]


def builtin_windows(
    category: str, tokenizer: Any, count: int, seq_len: int, rng: np.random.Generator, seed: int
) -> torch.Tensor:
    """``count`` windows of ``seq_len`` tokens of ``category``; ``rng`` places them, ``seed`` picks the documents."""
    spec = builtin_category(category)
    if spec.unit is not None:
        return _tiled_windows(category, spec.unit, tokenizer, count, seq_len, rng)
    documents = spec.documents(_document_rng(category, seed), 8 * seq_len)
    describe = f"'builtin:{category}'"
    # Read twice what is needed (plus room for the offset), so windows are drawn from a spread of documents.
    stream = token_stream(tokenizer, documents, cap=2 * count * seq_len + seq_len, source=describe)
    if stream is None or stream.size < count * seq_len:  # the generators are endless; only a broken tokenizer
        raise CalibrationDataError(f"The tokenizer produced no tokens for {describe}.")
    return pick_windows(stream, count, seq_len, rng)


def _tiled_windows(
    category: str,
    unit: Callable[[np.random.Generator], str],
    tokenizer: Any,
    count: int,
    seq_len: int,
    rng: np.random.Generator,
) -> torch.Tensor:
    rows = []
    for _ in range(count):
        text = unit(rng)
        ids = encode(tokenizer, [text])[0]
        if not ids:
            raise CalibrationDataError(f"The tokenizer produced no tokens for {text!r} ('builtin:{category}').")
        reps = -(-seq_len // len(ids))
        rows.append(np.tile(np.asarray(ids, dtype=np.int64), reps)[:seq_len])
    return torch.from_numpy(np.stack(rows))


def _technical_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - some distributions strip pydoc_data
        topics = {}
    texts = [topics[k] for k in sorted(topics) if topics[k].strip()]
    if not texts:  # pragma: no cover - fall back on docstrings of standard modules
        import argparse
        import collections
        import functools
        import itertools
        import json
        import pathlib
        import re
        import socket
        import subprocess

        modules = (argparse, collections, functools, itertools, json, pathlib, re, socket, subprocess)
        texts = [m.__doc__ for m in modules if m.__doc__]
    return texts


def _technical_stream(rng: np.random.Generator) -> Iterator[str]:
    """Python's help topics in a seeded order, reshuffled after every pass (endless)."""
    topics = _technical_topics()
    while True:
        for i in rng.permutation(len(topics)):
            yield topics[int(i)]


def _long_context_stream(rng: np.random.Generator, min_chars: int) -> Iterator[str]:
    """Endless long documents: 3 or more help topics and math problems joined, of at least ``min_chars`` characters."""
    topics = _technical_stream(rng)
    while True:
        parts: list[str] = []
        size = 0
        while size < min_chars or len(parts) < 3:
            part = next(topics) if rng.random() < 0.75 else _math_problem(rng)
            parts.append(part.strip())
            size += len(parts[-1]) + 7
        yield "\n\n* * *\n\n".join(parts)


_NAMES = ("Ana", "Ben", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jana", "Kofi", "Lena", "Mateo")
_ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "cards", "shells", "stamps")


def _math_problem(rng: np.random.Generator) -> str:
    """One arithmetic word problem with a worked solution of ``a op b = c`` steps and "The answer is N."."""

    def r(lo: int, hi: int) -> int:
        return int(rng.integers(lo, hi + 1))

    name = _NAMES[r(0, len(_NAMES) - 1)]
    item = _ITEMS[r(0, len(_ITEMS) - 1)]
    kind = r(0, 5)
    if kind == 0:
        a, bags, per = r(2, 60), r(2, 9), r(3, 24)
        x = bags * per
        question = (
            f"{name} has {a} {item} and buys {bags} bags of {per} {item} each. How many {item} does {name} have now?"
        )
        steps = [f"{bags} * {per} = {x}", f"{a} + {x} = {a + x}"]
        answer = a + x
    elif kind == 1:
        speed, hours, extra = r(20, 120), r(2, 9), r(5, 90)
        x = speed * hours
        question = (
            f"A train travels at {speed} km per hour for {hours} hours and then {extra} km more. "
            f"How many kilometres does it travel in total?"
        )
        steps = [f"{speed} * {hours} = {x}", f"{x} + {extra} = {x + extra}"]
        answer = x + extra
    elif kind == 2:
        friends, share, kept = r(2, 9), r(2, 30), r(1, 40)
        total = kept + friends * share
        rest = total - kept
        question = (
            f"{name} had {total} {item}, kept {kept} and shared the rest equally among {friends} friends. "
            f"How many {item} did each friend get?"
        )
        steps = [f"{total} - {kept} = {rest}", f"{rest} / {friends} = {share}"]
        answer = share
    elif kind == 3:
        w, h = r(2, 40), r(2, 40)
        area, half, perimeter = w * h, w + h, 2 * (w + h)
        question = f"A rectangle is {w} m wide and {h} m long. What is its area plus its perimeter?"
        steps = [f"{w} * {h} = {area}", f"{w} + {h} = {half}", f"2 * {half} = {perimeter}"]
        steps.append(f"{area} + {perimeter} = {area + perimeter}")
        answer = area + perimeter
    elif kind == 4:
        price, count = r(2, 25), r(2, 12)
        cost = price * count
        paid = (cost // 50 + 1) * 50
        question = (
            f"Pens cost {price} dollars each. {name} buys {count} pens and pays with {paid} dollars. "
            f"How much change does {name} get?"
        )
        steps = [f"{price} * {count} = {cost}", f"{paid} - {cost} = {paid - cost}"]
        answer = paid - cost
    else:
        rate, days, broken = r(10, 200), r(2, 14), r(1, 30)
        made = rate * days
        question = (
            f"A factory makes {rate} toys a day for {days} days, and {broken} of them are broken. "
            f"How many good toys are made?"
        )
        steps = [f"{rate} * {days} = {made}", f"{made} - {broken} = {made - broken}"]
        answer = made - broken
    return f"Question: {question}\nSolution: {'; '.join(steps)}. The answer is {answer}."


def _endless(make: Callable[[], str]) -> Iterator[str]:
    while True:
        yield make()


def _rare_char(rng: np.random.Generator) -> str:
    return _RARE_CHARS[int(rng.integers(len(_RARE_CHARS)))]


def _number_unit(rng: np.random.Generator) -> str:
    return f" {int(rng.integers(1000, 10000))}"


def _repeated_chars(rng: np.random.Generator, min_chars: int) -> Iterator[str]:
    return _endless(lambda: _rare_char(rng) * min_chars)


def _repeated_numbers(rng: np.random.Generator, min_chars: int) -> Iterator[str]:
    """"4821 4821 ...": a unit of 5 characters repeated past ``min_chars``."""
    return _endless(lambda: (_number_unit(rng) * (min_chars // 5 + 1)).strip())


BUILTIN_CATEGORY_MAP: dict[str, BuiltinCategory] = {
    "technical": BuiltinCategory(lambda rng, min_chars: _technical_stream(rng)),
    "math": BuiltinCategory(lambda rng, min_chars: _endless(lambda: _math_problem(rng))),
    "long_context": BuiltinCategory(lambda rng, min_chars: _long_context_stream(rng, min_chars=min_chars)),
    "repetition_char": BuiltinCategory(_repeated_chars, unit=_rare_char),
    "repetition_number": BuiltinCategory(_repeated_numbers, unit=_number_unit),
}
BUILTIN_CATEGORIES: tuple[str, ...] = tuple(BUILTIN_CATEGORY_MAP)
