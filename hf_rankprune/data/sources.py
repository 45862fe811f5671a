"""Where calibration text comes from: the spec grammar (see `load_calibration_samples`) and one reader per kind.

A spec becomes one or more `SourceGroup`s, each one category of samples: a local .txt/.jsonl/.parquet file, a
`datasets` object, a Hub dataset streamed with `datasets`, a `TextSource`, or the builtin suite (one group per
category). User sources are read lazily, only as far as their windows need.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from ..errors import CalibrationDataError
from .builtin import BUILTIN_CATEGORIES, builtin_category, builtin_windows
from .samples import TextSource
from .windows import Parts, document_windows

__all__ = ["FILE_SUFFIXES", "TEXT_FIELD", "SourceGroup", "expand_specs"]

FILE_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".parquet")
TEXT_FIELD = "text"

_LOOKS_LIKE_FILE = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow")
_DATASET_SPEC = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(:[\w.\-]*){0,2}$")
_READ_BLOCK = 1 << 16  # characters read from a text file at a time


class SourceGroup:
    """One category of samples: its label, how messages name it, and how its windows are cut."""

    def __init__(self, category: str, describe: str) -> None:
        self.category = category
        self.describe = describe

    def windows(
        self, tokenizer: Any, count: int, seq_len: int, rng: np.random.Generator, seed: int
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class _DocumentGroup(SourceGroup):
    """User data: documents read lazily, only up to a token cap, so a huge file or dataset costs no more than the
    samples asked for."""

    def __init__(self, category: str, describe: str, documents: Callable[[], Iterable[Any]]) -> None:
        super().__init__(category, describe)
        self._documents = documents

    def windows(self, tokenizer, count, seq_len, rng, seed):
        return document_windows(self._documents, self.describe, tokenizer, count, seq_len, rng)


class _BuiltinGroup(SourceGroup):
    def __init__(self, category: str) -> None:
        super().__init__(category, f"'builtin:{category}'")

    def windows(self, tokenizer, count, seq_len, rng, seed):
        return builtin_windows(self.category, tokenizer, count, seq_len, rng, seed)


PYDOC_SPEC = "pydoc"


def _pydoc_training_texts() -> list[str]:
    """Python's own documentation topics (stdlib `pydoc_data`, on every machine) without the held-out documents
    that evaluation's perplexity reads: offline English prose for recovery, disjoint from the perplexity text."""
    from ..evaluation.texts import is_heldout, load_documents

    return [text for doc_id, text in load_documents(("pydoc",)) if not is_heldout(doc_id)]


def expand_specs(data: Any) -> list[SourceGroup]:
    """The groups of `data` (one spec or a list of them), in order."""
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
    groups: list[SourceGroup] = []
    for spec in specs:
        groups.extend(_spec_groups(spec))
    return groups


def _spec_groups(spec: Any) -> list[SourceGroup]:
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
        builtin_category(category)  # an unknown name is an error here, before any reading
        return [_BuiltinGroup(category)]
    if text == PYDOC_SPEC:
        return [_DocumentGroup(PYDOC_SPEC, f"'{PYDOC_SPEC}' (Python's pydoc_data.topics)", _pydoc_training_texts)]
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


def _file_group(path: Path) -> SourceGroup:
    if path.is_dir():
        raise CalibrationDataError(f"Calibration data path {str(path)!r} is a directory: name the files in it.")
    if not path.exists():
        raise CalibrationDataError(f"Calibration data file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    describe = f"file {str(path)!r}"
    if suffix == ".txt":
        return _DocumentGroup(path.stem, describe, lambda: [Parts(_read_text_blocks(path))])
    if suffix == ".jsonl":
        return _DocumentGroup(path.stem, describe, lambda: _read_jsonl(path))
    if suffix == ".parquet":
        return _DocumentGroup(path.stem, describe, lambda: _read_parquet(path))
    raise CalibrationDataError(
        f"Unsupported calibration file type {suffix or '(no suffix)'!r} for {str(path)!r}: "
        f"supported are {', '.join(FILE_SUFFIXES)}."
    )


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


def _dataset_object_group(dataset: Any) -> SourceGroup:
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
    return _DocumentGroup(name, describe, lambda: _dataset_texts(dataset, describe))


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


def _hub_group(body: str, spec: str) -> SourceGroup:
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

    return _DocumentGroup(name, describe, documents)


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


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
