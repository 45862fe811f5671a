"""Calibration data: fixed-length token windows, each labelled with its context category.

The state-rank statistics (PAPER.md) are measured on calibration samples. The paper compares very different
contexts (math, STEM, long context, adversarial repetition), so every sample carries a category label, and a
built-in suite that needs no network provides one category for each (`builtin`).

Entry point: :func:`load_calibration_samples`. How ``data`` is read is described there. The package's modules:
`samples` (the containers), `sources` (the spec grammar and the readers), `windows` (tokenising and cutting) and
`builtin` (the synthetic suite, one generator per category) and `retrieval` (passkey-like retrieval documents with
per-token weights, which the output-aware head scores mix into their samples: `retrieval_mix`).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from ..errors import CalibrationDataError
from .builtin import BUILTIN_CATEGORIES, builtin_texts
from .retrieval import RETRIEVAL_CATEGORY, mix_retrieval, retrieval_documents
from .samples import CalibrationSamples, TextSource, describe_samples
from .sources import expand_specs

__all__ = [
    "BUILTIN_CATEGORIES",
    "CalibrationDataError",
    "CalibrationSamples",
    "RETRIEVAL_CATEGORY",
    "TextSource",
    "builtin_texts",
    "describe_samples",
    "load_calibration_samples",
    "mix_retrieval",
    "retrieval_documents",
]


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
    * ``"pydoc"``: Python's documentation topics (the standard library's ``pydoc_data``, offline on every machine)
      without the documents held out for perplexity (`hf_rankprune.evaluation.texts`): English prose, part of the
      demo model's training text, which recovery distils on.
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

    groups = expand_specs(data)
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


def _check_int(name: str, value: Any, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CalibrationDataError(f"{name}={value!r} must be an int.")
    if minimum is not None and value < minimum:
        raise CalibrationDataError(f"{name}={value} must be >= {minimum}.")
    return int(value)
