"""The containers calibration data comes in (`TextSource`) and goes out as (`CalibrationSamples`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import CalibrationDataError

__all__ = ["CalibrationSamples", "TextSource", "describe_samples"]


@dataclass
class CalibrationSamples:
    """Calibration samples: ``input_ids`` [N, seq_len] (int64) and the context category of each row.

    Rows are interleaved round-robin across sources/categories, so any prefix and any :meth:`shard` covers the
    categories as evenly as possible.

    ``weights`` (optional, float32 [N, seq_len]): how much each position's prediction counts in a weighted objective
    (the output-aware head scores' KL and loss): weights[i, t] weighs the prediction made at position t, i.e. of
    token t + 1 from tokens 0..t (0 = ignored, e.g. padding). None means uniform (every position 1); rank
    calibration ignores them.
    """

    input_ids: torch.LongTensor
    categories: list[str]
    weights: torch.Tensor | None = None

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
        if self.weights is not None:
            if not isinstance(self.weights, torch.Tensor) or tuple(self.weights.shape) != tuple(self.input_ids.shape):
                shape = tuple(self.weights.shape) if isinstance(self.weights, torch.Tensor) else type(self.weights)
                raise CalibrationDataError(
                    f"weights of shape {shape} for input_ids of shape {tuple(self.input_ids.shape)}: give one weight "
                    "per token, or None for uniform weights."
                )
            self.weights = self.weights.float()
            if not torch.isfinite(self.weights).all() or (self.weights < 0).any():
                raise CalibrationDataError("weights must be finite and >= 0.")

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
        weights = None if self.weights is None else self.weights[rank::world_size].clone()
        return CalibrationSamples(self.input_ids[rank::world_size].clone(), self.categories[rank::world_size], weights)

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
