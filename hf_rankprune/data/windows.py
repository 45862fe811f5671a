"""From documents to token windows: tokenising with any tokenizer kind, joining with eos, cutting fixed windows.

Text is read and tokenised lazily, only up to a token cap, so a huge file or an endless builtin generator costs no
more than the samples asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import CalibrationDataError

__all__ = ["Parts", "cycle", "document_windows", "encode", "eos_ids", "pick_windows", "token_stream"]

_PART_CHARS = (1 << 16, 1 << 22)  # a long document is tokenised in parts of this many characters (min, max)
_BARREN_CHARS = 1 << 20  # this much text without a single token: the tokenizer is broken (e.g. built empty)


class Parts:
    """One document given in consecutive parts (a large file read block by block): tokenised without separators."""

    def __init__(self, parts: Iterable[str]) -> None:
        self.parts = parts


def encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens, for the tokenizer kinds we accept."""
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover
        PreTrainedTokenizerBase = ()  # noqa: N806
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    elif hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    elif hasattr(tokenizer, "encode"):
        ids = []
        for text in texts:
            try:
                ids.append(tokenizer.encode(text, add_special_tokens=False))
            except TypeError:
                ids.append(tokenizer.encode(text))
    elif callable(tokenizer):
        ids = []
        for text in texts:
            out = tokenizer(text)
            ids.append(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    else:
        raise CalibrationDataError(
            f"Tokenizer of type {type(tokenizer).__name__} has neither encode() nor __call__: pass the model's tokenizer."
        )
    return [list(map(int, x.tolist() if hasattr(x, "tolist") else x)) for x in ids]


def eos_ids(tokenizer: Any) -> list[int]:
    """The separator put between documents: the tokenizer's eos id, or nothing when it has none."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return [int(eos)] if isinstance(eos, int) and not isinstance(eos, bool) else []


def _cut(text: str, start: int, limit: int) -> int:
    """End of a part of `text` from `start` of about `limit` characters, before a whitespace when there is one."""
    end = start + limit
    if end >= len(text):
        return len(text)
    lower = max(start + 1, end - 4096)
    space = max(text.rfind(" ", lower, end), text.rfind("\n", lower, end), text.rfind("\t", lower, end))
    return space if space > start else end


def _pieces(documents: Iterable[Any], part_chars: int, source: str) -> Iterator[tuple[str, int]]:
    """(text, document number) pieces: short documents whole, long ones (or Parts) in parts of ~part_chars."""
    for number, document in enumerate(documents):
        if isinstance(document, Parts):
            parts: Iterable[str] = document.parts
        elif isinstance(document, str):
            if len(document) <= part_chars:
                yield document, number
                continue
            parts = (document,)
        else:
            raise CalibrationDataError(f"{source} yielded a {type(document).__name__}, not a text.")
        buffer, start = "", 0
        for part in parts:
            buffer = buffer[start:] + part if start < len(buffer) else part
            start = 0
            while len(buffer) - start > part_chars:
                end = _cut(buffer, start, part_chars)
                yield buffer[start:end], number
                start = end
        if start < len(buffer):
            yield buffer[start:], number


def token_stream(tokenizer: Any, documents: Iterable[Any], cap: int | None, source: str) -> np.ndarray | None:
    """Documents tokenised and joined with eos; stops once ``cap`` tokens are read. None when there is no text.

    Only as much text is read and tokenised as the cap needs: documents are pulled one by one, and a long document
    (or a file read in parts) is tokenised part by part. A tokenizer that gives no token for a lot of text (one built
    without its vocabulary) is an error, never an endless loop over the endless builtin generators.
    """
    eos = eos_ids(tokenizer)
    part_chars = min(max(16 * cap, _PART_CHARS[0]), _PART_CHARS[1]) if cap is not None else _PART_CHARS[1]
    pieces: list[np.ndarray] = []
    total = 0
    barren = 0  # characters of non-blank text tokenised since the last token
    last_document = None
    iterator = _pieces(documents, part_chars, source)
    chunk_size = 2  # grows to 256: few documents are tokenised past the cap, many are batched when no cap
    while True:
        chunk_size = min(2 * chunk_size, 256)
        chunk: list[tuple[str, int]] = []
        for text, number in iterator:
            if text.strip():
                chunk.append((text, number))
            if len(chunk) >= chunk_size:
                break
        if not chunk:
            break
        for (text, number), ids in zip(chunk, encode(tokenizer, [text for text, _ in chunk])):
            if not ids:
                barren += len(text)
                continue
            barren = 0
            if pieces and eos and number != last_document:
                pieces.append(np.asarray(eos, dtype=np.int64))
                total += len(eos)
            pieces.append(np.asarray(ids, dtype=np.int64))
            total += len(ids)
            last_document = number
        if barren > _BARREN_CHARS:
            break
        if cap is not None and total >= cap:
            break
    if not pieces and barren:
        raise CalibrationDataError(
            f"The tokenizer produced no tokens for {barren} characters of text from {source}: it is empty or does "
            "not fit this text. Check that the model folder holds its tokenizer files (tokenizer.json or "
            "tokenizer.model with tokenizer_config.json)."
        )
    if barren > _BARREN_CHARS:
        raise CalibrationDataError(
            f"The tokenizer produced no tokens for the last {barren} characters of text from {source}: check the "
            "model's tokenizer files and the data."
        )
    if not pieces:
        return None
    return np.concatenate(pieces)


def cycle(stream: np.ndarray, needed: int, eos: list[int]) -> np.ndarray:
    """`stream` repeated (eos between repeats) until it holds at least `needed` tokens."""
    unit = np.concatenate([np.asarray(eos, dtype=np.int64), stream]) if eos else stream
    repeats = -(-(needed - stream.size) // unit.size)
    return np.concatenate([stream] + [unit] * repeats)


def pick_windows(stream: np.ndarray, count: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` non-overlapping windows on a grid shifted by a random offset, at randomly chosen grid slots."""
    slots = stream.size // seq_len
    offset = int(rng.integers(0, stream.size - slots * seq_len + 1))
    chosen = np.sort(rng.choice(slots, size=count, replace=False))
    starts = offset + chosen * seq_len
    return torch.from_numpy(np.stack([stream[s : s + seq_len] for s in starts]).astype(np.int64))


def document_windows(
    documents: Callable[[], Iterable[Any]],
    describe: str,
    tokenizer: Any,
    count: int,
    seq_len: int,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Windows of user data, read only up to 8x the tokens they need; data short of `count` windows is cycled
    (with a warning), data short of one window is an error."""
    cap = 8 * count * seq_len + seq_len
    stream = token_stream(tokenizer, documents(), cap=cap, source=describe)
    if stream is None:
        raise CalibrationDataError(f"Calibration source {describe} is empty: it holds no text.")
    if stream.size < seq_len:
        raise CalibrationDataError(
            f"Calibration source {describe} has only {stream.size} tokens, but one sample of "
            f"seq_len={seq_len} needs {seq_len}: give more text or a smaller seq_len."
        )
    if stream.size < count * seq_len:
        warnings.warn(
            f"Calibration source {describe} has {stream.size} tokens, fewer than the {count * seq_len} "
            f"needed for {count} non-overlapping samples of {seq_len} tokens: its text is repeated.",
            UserWarning,
            stacklevel=5,  # the code calling whatever called load_calibration_samples (e.g. RankPruner.calibrate)
        )
        stream = cycle(stream, count * seq_len, eos_ids(tokenizer))
    return pick_windows(stream, count, seq_len, rng)
