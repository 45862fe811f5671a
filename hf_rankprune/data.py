"""Calibration data: fixed-length token windows, each labelled with its context category.

The state-rank statistics (PAPER.md) are measured on calibration samples. The paper compares very different
contexts (math, STEM, long context, adversarial repetition), so every sample carries a category label, and a
built-in suite that needs no network provides one category for each:

    technical          technical prose: Python's own help topics (``pydoc_data.topics``)
    math               generated arithmetic word problems with worked solutions (seeded generator)
    long_context       long documents made of several help topics and math problems concatenated
    repetition_char    one rare character repeated over the whole sample (adversarial, paper App. D)
    repetition_number  one number repeated over the whole sample ("4821 4821 4821 ...")

Entry point: :func:`load_calibration_samples`. How ``data`` is read is described there.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from .errors import CalibrationDataError  # noqa: F401 (re-exported)

__all__ = [
    "BUILTIN_CATEGORIES",
    "CalibrationDataError",
    "CalibrationSamples",
    "TextSource",
    "builtin_texts",
    "describe_samples",
    "load_calibration_samples",
]

BUILTIN_CATEGORIES: tuple[str, ...] = ("technical", "math", "long_context", "repetition_char", "repetition_number")
FILE_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".parquet")
TEXT_FIELD = "text"

_RARE_CHARS = ("§", "ж", "¶", "Ω", "ψ", "¤", "µ", "ß")
_LOOKS_LIKE_FILE = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow")
_DATASET_SPEC = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(:[\w.\-]*){0,2}$")



# ---------------------------------------------------------------------------------------------------------------
# public containers
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CalibrationSamples:
    """Calibration samples: ``input_ids`` [N, seq_len] (int64) and the context category of each row.

    Rows are interleaved round-robin across sources/categories, so any prefix and any :meth:`shard` covers the
    categories as evenly as possible.
    """

    input_ids: torch.LongTensor
    categories: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.input_ids, torch.Tensor) or self.input_ids.dim() != 2:
            raise CalibrationDataError("input_ids must be a 2-D tensor [num_samples, seq_len].")
        if self.input_ids.dtype != torch.long:
            self.input_ids = self.input_ids.long()
        self.categories = list(self.categories)
        if len(self.categories) != self.input_ids.shape[0]:
            raise CalibrationDataError(
                f"{len(self.categories)} categories for {self.input_ids.shape[0]} samples: give one per sample."
            )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def shard(self, rank: int, world_size: int) -> CalibrationSamples:
        """Samples ``rank::world_size``: the part process ``rank`` of ``world_size`` calibrates on.

        The shards of all ranks partition the samples exactly; a shard is empty when there are fewer samples than
        processes.
        """
        for name, value in (("rank", rank), ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise CalibrationDataError(f"{name}={value!r} must be an int.")
        if world_size < 1:
            raise CalibrationDataError(f"world_size={world_size} must be >= 1.")
        if not 0 <= rank < world_size:
            raise CalibrationDataError(f"rank={rank} must be in [0, {world_size - 1}] for world_size={world_size}.")
        return CalibrationSamples(self.input_ids[rank::world_size].clone(), self.categories[rank::world_size])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.LongTensor, list[str]]]:
        """Consecutive batches of at most ``batch_size`` samples, with their categories."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CalibrationDataError(f"batch_size={batch_size!r} must be an int >= 1.")
        for start in range(0, len(self), batch_size):
            yield self.input_ids[start : start + batch_size], self.categories[start : start + batch_size]


@dataclass(frozen=True)
class TextSource:
    """Raw texts given in memory, as one calibration source labelled ``name`` (default "custom").

    Plain strings in ``data`` are specs (a file, "builtin[:category]", a dataset name), never texts: wrap texts in
    a TextSource, e.g. ``load_calibration_samples(TextSource(["first doc", "second doc"]), tok, 8, 512)``.
    """

    texts: Sequence[str]
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.texts, (str, bytes)):
            raise CalibrationDataError("TextSource(texts=...) takes a list of texts, not a single string.")
        texts = tuple(self.texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise CalibrationDataError(
                f"TextSource {self.name!r}: texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str."
            )
        if not isinstance(self.name, str) or not self.name:
            raise CalibrationDataError("TextSource(name=...) must be a non-empty string.")
        object.__setattr__(self, "texts", texts)


def describe_samples(samples: CalibrationSamples) -> dict[str, int]:
    """Number of samples per category, in order of first appearance (for reports)."""
    counts: dict[str, int] = {}
    for category in samples.categories:
        counts[category] = counts.get(category, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------
def load_calibration_samples(
    data: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int = 0
) -> CalibrationSamples:
    """Tokenise calibration data and cut ``num_samples`` windows of exactly ``seq_len`` tokens.

    ``data`` is one source spec or a list of them. A spec is:

    * ``None`` or ``"builtin"``: the built-in offline suite, all of :data:`BUILTIN_CATEGORIES`;
      ``"builtin:<category>"``: one category of it.
    * a path (``str`` or ``os.PathLike``) to an existing local file, read by suffix:
      ``.txt`` (the whole file is one document), ``.jsonl`` (one JSON object per line, text in field ``"text"``),
      ``.parquet`` (column ``"text"``). A string ending in one of these suffixes, or starting with ``/``, ``./``,
      ``../`` or ``~``, is always a path, and a missing one is an error.
    * ``"hf:<name>[:<config>[:<split>]]"`` (or the same without ``hf:``, when it is no path): a Hugging Face Hub
      dataset with a ``"text"`` column, e.g. ``"wikitext:wikitext-2-raw-v1:train"``; split defaults to "train"
      (``"name::validation"`` gives a split without a config). It is streamed with ``datasets.load_dataset``
      only when the Hub is reachable (and ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` are unset); otherwise a
      clear error asks for a local file or the builtin suite.
    * a ``datasets.Dataset`` / ``IterableDataset`` object with a ``"text"`` column.
    * a :class:`TextSource` holding raw texts. Plain strings are never taken as texts, so a list of strings is
      always a list of specs.

    Every source is one group, except the builtin suite which gives one group per category. Samples are spread
    evenly over the groups (the first groups get one more when it does not divide) and interleaved round-robin.
    Each sample is labelled with its group's category: the builtin category name, the file stem, the dataset
    name, ``Dataset.info.dataset_name`` (else "dataset") or the TextSource name.

    Within a group, documents are tokenised without special tokens and concatenated with the tokenizer's eos
    token between them (nothing when it has none); windows are drawn without overlap, at positions chosen by a
    numpy Generator seeded from ``(seed, category, group index)``, so the same inputs give the same samples in
    every run and process. Every source is read lazily and only as far as needed: about 8x the tokens its windows
    need (so the windows of a very large file come from its beginning), long documents and .txt files tokenised in
    parts; a binary file and a tokenizer that yields no tokens are errors. A group whose data holds fewer windows
    than it needs is cycled (with a warning for user data; builtin categories generate more text instead). User
    data shorter than one window is an error.
    The repetition categories are made by tiling the token ids of one unit (a rare character, or " <number>"),
    so they are exactly periodic whatever the tokenizer.

    ``tokenizer`` may be a transformers tokenizer, a ``tokenizers.Tokenizer``, or anything with ``encode(text)``
    or ``__call__(texts)`` returning token ids.

    Raises :class:`CalibrationDataError` (a ``ValueError``) for every problem with the arguments or the data.
    """
    num_samples = _check_int("num_samples", num_samples, 1)
    seq_len = _check_int("seq_len", seq_len, 1)
    seed = _check_int("seed", seed, None)
    if tokenizer is None:
        raise CalibrationDataError("tokenizer is None: pass the model's tokenizer.")

    groups = _expand_specs(data)
    counts = [num_samples // len(groups) + (1 if i < num_samples % len(groups) else 0) for i in range(len(groups))]
    per_group: list[tuple[str, torch.Tensor]] = []
    for index, (group, count) in enumerate(zip(groups, counts)):
        if count == 0:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(group.category.encode("utf-8")), index])
        windows = group.windows(tokenizer, count, seq_len, rng, seed)
        per_group.append((group.category, windows))

    rows: list[torch.Tensor] = []
    categories: list[str] = []
    for j in range(max(w.shape[0] for _, w in per_group)):
        for category, windows in per_group:
            if j < windows.shape[0]:
                rows.append(windows[j])
                categories.append(category)
    return CalibrationSamples(torch.stack(rows).long(), categories)


# ---------------------------------------------------------------------------------------------------------------
# spec parsing
# ---------------------------------------------------------------------------------------------------------------
class _Group:
    """One category's source of documents and how windows are cut from it."""

    def __init__(self, category: str, describe: str) -> None:
        self.category = category
        self.describe = describe

    def windows(
        self, tokenizer: Any, count: int, seq_len: int, rng: np.random.Generator, seed: int
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class _DocumentGroup(_Group):
    """User data: documents read lazily, only up to a token cap (8x what the windows need), so a huge file or
    dataset costs no more than the samples asked for. `lazy` is kept for callers; every source is read this way."""

    def __init__(self, category: str, describe: str, documents: Callable[[], Iterable[str]], lazy: bool = True):
        super().__init__(category, describe)
        self._documents = documents
        self._lazy = lazy

    def windows(self, tokenizer, count, seq_len, rng, seed):
        cap = 8 * count * seq_len + seq_len
        stream = _token_stream(tokenizer, self._documents(), cap=cap, source=self.describe)
        if stream is None:
            raise CalibrationDataError(f"Calibration source {self.describe} is empty: it holds no text.")
        if stream.size < seq_len:
            raise CalibrationDataError(
                f"Calibration source {self.describe} has only {stream.size} tokens, but one sample of "
                f"seq_len={seq_len} needs {seq_len}: give more text or a smaller seq_len."
            )
        if stream.size < count * seq_len:
            warnings.warn(
                f"Calibration source {self.describe} has {stream.size} tokens, fewer than the {count * seq_len} "
                f"needed for {count} non-overlapping samples of {seq_len} tokens: its text is repeated.",
                UserWarning,
                stacklevel=4,
            )
            stream = _cycle(stream, count * seq_len, _eos_ids(tokenizer))
        return _pick_windows(stream, count, seq_len, rng)


class _BuiltinGroup(_Group):
    def __init__(self, category: str) -> None:
        super().__init__(category, f"'builtin:{category}'")

    def windows(self, tokenizer, count, seq_len, rng, seed):
        if self.category in ("repetition_char", "repetition_number"):
            return _repetition_windows(self.category, tokenizer, count, seq_len, rng)
        doc_rng = np.random.default_rng([seed, zlib.crc32(self.category.encode("utf-8")), 0xD0C])
        if self.category == "technical":
            documents = _technical_stream(doc_rng)
        elif self.category == "math":
            documents = _endless(lambda: _math_problem(doc_rng))
        else:
            documents = _long_context_stream(doc_rng, min_chars=8 * seq_len)
        # Read twice what is needed (plus room for the offset), so windows are drawn from a spread of documents.
        stream = _token_stream(tokenizer, documents, cap=2 * count * seq_len + seq_len, source=self.describe)
        if stream is None or stream.size < count * seq_len:  # the generators are endless; only a broken tokenizer
            raise CalibrationDataError(f"The tokenizer produced no tokens for {self.describe}.")
        return _pick_windows(stream, count, seq_len, rng)


def _expand_specs(data: Any) -> list[_Group]:
    if data is None:
        return [_BuiltinGroup(c) for c in BUILTIN_CATEGORIES]
    if isinstance(data, (list, tuple)):
        if not data:
            raise CalibrationDataError(
                "data is an empty list: give at least one source (a file, 'builtin[:category]', a dataset name, "
                "a datasets.Dataset or a TextSource), or None for the builtin suite."
            )
        specs = list(data)
    else:
        specs = [data]
    groups: list[_Group] = []
    for spec in specs:
        groups.extend(_spec_groups(spec))
    return groups


def _spec_groups(spec: Any) -> list[_Group]:
    if isinstance(spec, TextSource):
        texts = spec.texts
        return [_DocumentGroup(spec.name, f"TextSource {spec.name!r}", lambda: texts)]
    if isinstance(spec, os.PathLike):
        return [_file_group(Path(spec))]
    if _is_hf_dataset(spec):
        return [_dataset_object_group(spec)]
    if spec is None:
        raise CalibrationDataError("None inside a list of data specs: write 'builtin' for the builtin suite.")
    if not isinstance(spec, str):
        raise CalibrationDataError(
            f"Unsupported calibration data spec of type {type(spec).__name__}: give a path, 'builtin[:category]', "
            f"'hf:<dataset>', a datasets.Dataset or a TextSource (for raw texts)."
        )
    text = spec.strip()
    if text == "builtin":
        return [_BuiltinGroup(c) for c in BUILTIN_CATEGORIES]
    if text.startswith("builtin:"):
        category = text[len("builtin:") :]
        if category not in BUILTIN_CATEGORIES:
            raise CalibrationDataError(
                f"Unknown builtin category {category!r}: known categories are {', '.join(BUILTIN_CATEGORIES)}."
            )
        return [_BuiltinGroup(category)]
    if text.startswith("hf:"):
        return [_hub_group(text[len("hf:") :], spec)]
    path = Path(os.path.expanduser(text))
    if path.exists():
        return [_file_group(path)]
    if text.lower().endswith(_LOOKS_LIKE_FILE) or text.startswith(("/", "./", "../", "~")):
        raise CalibrationDataError(f"Calibration data file {text!r} does not exist.")
    if _DATASET_SPEC.match(text):
        return [_hub_group(text, spec)]
    raise CalibrationDataError(
        f"Calibration data spec {_short(spec)!r} is neither an existing file, 'builtin[:category]' nor a dataset "
        f"name ('hf:<name>[:<config>[:<split>]]'). To calibrate on raw texts, pass TextSource([...])."
    )


def _file_group(path: Path) -> _Group:
    if path.is_dir():
        raise CalibrationDataError(f"Calibration data path {str(path)!r} is a directory: name the files in it.")
    if not path.exists():
        raise CalibrationDataError(f"Calibration data file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    describe = f"file {str(path)!r}"
    if suffix == ".txt":
        return _DocumentGroup(path.stem, describe, lambda: [_Parts(_read_text_blocks(path))])
    if suffix == ".jsonl":
        return _DocumentGroup(path.stem, describe, lambda: _read_jsonl(path))
    if suffix == ".parquet":
        return _DocumentGroup(path.stem, describe, lambda: _read_parquet(path))
    raise CalibrationDataError(
        f"Unsupported calibration file type {suffix or '(no suffix)'!r} for {str(path)!r}: "
        f"supported are {', '.join(FILE_SUFFIXES)}."
    )


class _Parts:
    """One document given in consecutive parts (a large file read block by block): tokenised without separators."""

    def __init__(self, parts: Iterable[str]) -> None:
        self.parts = parts


_READ_BLOCK = 1 << 16  # characters read from a text file at a time


def _not_text(path: Path, why: str) -> CalibrationDataError:
    return CalibrationDataError(
        f"Calibration data file {str(path)!r} is not a UTF-8 text file ({why}): give a .txt/.jsonl file of text "
        "or a .parquet file with a 'text' column."
    )


def _read_text_blocks(path: Path) -> Iterator[str]:
    """The text of a UTF-8 file in blocks, read only as far as they are consumed; binary files are refused."""
    try:
        with open(path, encoding="utf-8") as handle:
            while True:
                block = handle.read(_READ_BLOCK)
                if not block:
                    return
                if "\x00" in block:
                    raise _not_text(path, "it holds NUL bytes, as binary files do")
                yield block
    except UnicodeDecodeError as error:
        raise _not_text(path, f"invalid byte at position {error.start}") from None


def _read_jsonl(path: Path) -> Iterator[str]:
    """The 'text' field of each line, read lazily (only as far as the samples need)."""
    try:
        yield from _jsonl_texts(path)
    except UnicodeDecodeError as error:
        raise _not_text(path, f"invalid byte at position {error.start}") from None


def _jsonl_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if "\x00" in line:
                raise _not_text(path, f"line {number} holds NUL bytes, as binary files do")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CalibrationDataError(f"{str(path)!r} line {number} is not valid JSON: {error.msg}.") from None
            if not isinstance(record, dict):
                raise CalibrationDataError(
                    f"{str(path)!r} line {number} is a JSON {type(record).__name__}, not an object with a "
                    f"{TEXT_FIELD!r} field."
                )
            if TEXT_FIELD not in record:
                raise CalibrationDataError(
                    f"{str(path)!r} line {number} has no {TEXT_FIELD!r} field (fields seen: "
                    f"{', '.join(map(repr, record)) or 'none'}): every line needs the text in {TEXT_FIELD!r}."
                )
            value = record[TEXT_FIELD]
            if not isinstance(value, str):
                raise CalibrationDataError(
                    f"{str(path)!r} line {number}: field {TEXT_FIELD!r} is {type(value).__name__}, not a string."
                )
            yield value


def _read_parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise CalibrationDataError(f"Reading {str(path)!r} needs pyarrow: pip install pyarrow.") from None
    try:
        schema = pq.read_schema(path)
    except Exception as error:
        raise CalibrationDataError(f"{str(path)!r} is not a readable parquet file: {error}") from None
    if TEXT_FIELD not in schema.names:
        raise CalibrationDataError(
            f"{str(path)!r} has no {TEXT_FIELD!r} column (columns seen: {', '.join(map(repr, schema.names)) or 'none'})."
        )
    kind = schema.field(TEXT_FIELD).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise CalibrationDataError(f"{str(path)!r}: column {TEXT_FIELD!r} holds non-string values ({kind}).")
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=[TEXT_FIELD]):  # lazily, batch by batch
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value


def _is_hf_dataset(obj: Any) -> bool:
    module = sys.modules.get("datasets")
    if module is None:
        return False
    kinds = tuple(getattr(module, n) for n in ("Dataset", "IterableDataset", "DatasetDict", "IterableDatasetDict"))
    return isinstance(obj, kinds)


def _dataset_object_group(dataset: Any) -> _Group:
    module = sys.modules["datasets"]
    if isinstance(dataset, (module.DatasetDict, module.IterableDatasetDict)):
        raise CalibrationDataError(
            f"Got a DatasetDict with splits {list(dataset)}: pass one split, e.g. dataset['train']."
        )
    name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "dataset"
    describe = f"datasets object {name!r}"
    columns = dataset.column_names
    if columns is not None and TEXT_FIELD not in columns:
        raise CalibrationDataError(
            f"{describe} has no {TEXT_FIELD!r} column (columns seen: {', '.join(map(repr, columns)) or 'none'}): "
            f"rename the text column, e.g. dataset.rename_column('<yours>', 'text')."
        )
    lazy = isinstance(dataset, module.IterableDataset)
    return _DocumentGroup(name, describe, lambda: _dataset_texts(dataset, describe), lazy=lazy)


def _dataset_texts(dataset: Any, describe: str) -> Iterator[str]:
    for index, row in enumerate(dataset):
        if TEXT_FIELD not in row:
            raise CalibrationDataError(
                f"{describe} row {index} has no {TEXT_FIELD!r} field (fields seen: {', '.join(map(repr, row))})."
            )
        value = row[TEXT_FIELD]
        if value is not None:
            if not isinstance(value, str):
                raise CalibrationDataError(f"{describe} row {index}: {TEXT_FIELD!r} is {type(value).__name__}.")
            yield value


def _hub_group(body: str, spec: str) -> _Group:
    parts = body.split(":")
    if not parts[0] or len(parts) > 3 or not _DATASET_SPEC.match(body):
        raise CalibrationDataError(
            f"Bad dataset spec {spec!r}: write 'hf:<name>[:<config>[:<split>]]', e.g. 'hf:wikitext:wikitext-2-raw-v1:train'."
        )
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    describe = f"dataset {spec!r}"
    if not _hub_reachable():
        raise CalibrationDataError(
            f"Cannot load {describe}: this machine cannot reach the Hugging Face Hub (offline, or HF_HUB_OFFLINE / "
            f"HF_DATASETS_OFFLINE is set). Pass a local .txt/.jsonl/.parquet file or 'builtin' instead."
        )
    try:
        import datasets
    except ImportError:  # pragma: no cover - depends on the environment
        raise CalibrationDataError(f"Loading {describe} needs the datasets package: pip install datasets.") from None

    def documents() -> Iterator[str]:
        try:
            dataset = datasets.load_dataset(name, config, split=split, streaming=True)
        except Exception as error:
            raise CalibrationDataError(f"Could not load {describe}: {type(error).__name__}: {error}") from error
        yield from _dataset_texts(dataset, describe)

    return _DocumentGroup(name, describe, documents, lazy=True)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the Hub endpoint does not answer a TCP connect within ``timeout``."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# tokenisation and windows
# ---------------------------------------------------------------------------------------------------------------
def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
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


def _eos_ids(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return [int(eos)] if isinstance(eos, int) and not isinstance(eos, bool) else []


_PART_CHARS = (1 << 16, 1 << 22)  # a long document is tokenised in parts of this many characters (min, max)
_BARREN_CHARS = 1 << 20  # this much text without a single token: the tokenizer is broken (e.g. built empty)


def _cut(text: str, start: int, limit: int) -> int:
    """End of a part of `text` from `start` of about `limit` characters, before a whitespace when there is one."""
    end = start + limit
    if end >= len(text):
        return len(text)
    lower = max(start + 1, end - 4096)
    space = max(text.rfind(" ", lower, end), text.rfind("\n", lower, end), text.rfind("\t", lower, end))
    return space if space > start else end


def _pieces(documents: Iterable[Any], part_chars: int, source: str) -> Iterator[tuple[str, int]]:
    """(text, document number) pieces: short documents whole, long ones (or _Parts) in parts of ~part_chars."""
    for number, document in enumerate(documents):
        if isinstance(document, _Parts):
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


def _token_stream(tokenizer: Any, documents: Iterable[Any], cap: int | None, source: str) -> np.ndarray | None:
    """Documents tokenised and joined with eos; stops once ``cap`` tokens are read. None when there is no text.

    Only as much text is read and tokenised as the cap needs: documents are pulled one by one, and a long document
    (or a file read in parts) is tokenised part by part. A tokenizer that gives no token for a lot of text (one built
    without its vocabulary) is an error, never an endless loop over the endless builtin generators.
    """
    eos = _eos_ids(tokenizer)
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
        for (text, number), ids in zip(chunk, _encode(tokenizer, [text for text, _ in chunk])):
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


def _cycle(stream: np.ndarray, needed: int, eos: list[int]) -> np.ndarray:
    unit = np.concatenate([np.asarray(eos, dtype=np.int64), stream]) if eos else stream
    repeats = -(-(needed - stream.size) // unit.size)
    return np.concatenate([stream] + [unit] * repeats)


def _pick_windows(stream: np.ndarray, count: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` non-overlapping windows on a grid shifted by a random offset, at randomly chosen grid slots."""
    slots = stream.size // seq_len
    offset = int(rng.integers(0, stream.size - slots * seq_len + 1))
    chosen = np.sort(rng.choice(slots, size=count, replace=False))
    starts = offset + chosen * seq_len
    return torch.from_numpy(np.stack([stream[s : s + seq_len] for s in starts]).astype(np.int64))


def _repetition_windows(
    category: str, tokenizer: Any, count: int, seq_len: int, rng: np.random.Generator
) -> torch.Tensor:
    rows = []
    for _ in range(count):
        if category == "repetition_char":
            unit = _RARE_CHARS[int(rng.integers(len(_RARE_CHARS)))]
        else:
            unit = f" {int(rng.integers(1000, 10000))}"
        ids = _encode(tokenizer, [unit])[0]
        if not ids:
            raise CalibrationDataError(f"The tokenizer produced no tokens for {unit!r} ('builtin:{category}').")
        reps = -(-seq_len // len(ids))
        rows.append(np.tile(np.asarray(ids, dtype=np.int64), reps)[:seq_len])
    return torch.from_numpy(np.stack(rows))


# ---------------------------------------------------------------------------------------------------------------
# the builtin suite's text
# ---------------------------------------------------------------------------------------------------------------
def builtin_texts(category: str, num_docs: int, seed: int = 0, min_chars: int = 16384) -> list[str]:
    """The first ``num_docs`` documents the builtin ``category`` draws from (``min_chars``: long_context length).

    For the repetition categories, one document is one unit repeated ("§§§..." / "4821 4821 ...") to ``min_chars``.
    """
    if category not in BUILTIN_CATEGORIES:
        raise CalibrationDataError(
            f"Unknown builtin category {category!r}: known categories are {', '.join(BUILTIN_CATEGORIES)}."
        )
    rng = np.random.default_rng([seed, zlib.crc32(category.encode("utf-8")), 0xD0C])
    if category == "technical":
        stream: Iterator[str] = _technical_stream(rng)
    elif category == "math":
        stream = _endless(lambda: _math_problem(rng))
    elif category == "long_context":
        stream = _long_context_stream(rng, min_chars=min_chars)
    elif category == "repetition_char":
        stream = _endless(lambda: _RARE_CHARS[int(rng.integers(len(_RARE_CHARS)))] * min_chars)
    else:
        stream = _endless(lambda: (f"{int(rng.integers(1000, 10000))} " * (min_chars // 5 + 1)).strip())
    return [next(stream) for _ in range(num_docs)]


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
        import pathlib
        import re as re_module
        import subprocess

        modules = (argparse, collections, functools, itertools, json, pathlib, re_module, socket, subprocess)
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


def _check_int(name: str, value: Any, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CalibrationDataError(f"{name}={value!r} must be an int.")
    if minimum is not None and value < minimum:
        raise CalibrationDataError(f"{name}={value} must be >= {minimum}.")
    return int(value)


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
