"""`RankStats`: per-head state statistics on a time grid, stored as sums and counts so that runs merge exactly.

This is the contract between calibration and everything downstream (report, figures, scores). For each context
category it keeps, per linear layer, head and grid point, the sum and the sum of squares of every metric over the
samples seen, plus the number of samples seen at each grid point. Means, spreads and per-category views are derived.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import StatsError  # noqa: F401 (re-exported)

METRICS = ("threshold_rank", "nuclear_norm", "frobenius_norm", "stable_rank", "entropy_rank")
RANK_METRIC_NAMES = {"threshold": "threshold_rank", "stable": "stable_rank", "entropy": "entropy_rank"}
NORM_METRIC_NAMES = {"nuclear": "nuclear_norm", "frobenius": "frobenius_norm"}
FORMAT_VERSION = 1



def state_metrics(states: torch.Tensor, rank_eps: float) -> dict[str, torch.Tensor]:
    """Every metric of a batch of states [..., d_k, d_v], as float64 tensors of shape [...].

    Singular values come from the eigenvalues of the smaller Gram matrix in float64: cheaper than an SVD and exact
    enough that the relative threshold eps * sigma_1 is resolved for eps down to ~1e-6.
    - threshold_rank: #{i: sigma_i > eps * sigma_1} (PAPER.md Eq. 6; a zero state has rank 0)
    - nuclear_norm: sum sigma_i; frobenius_norm: sqrt(sum sigma_i^2)
    - stable_rank: sum sigma_i^2 / sigma_1^2
    - entropy_rank: exp(entropy of sigma / sum sigma) (Roy & Vetterli)
    """
    states = states.detach().to(torch.float64)
    if states.shape[-2] < states.shape[-1]:
        gram = states @ states.transpose(-1, -2)
    else:
        gram = states.transpose(-1, -2) @ states
    eigenvalues = torch.linalg.eigvalsh(gram)
    # Eigenvalues below the Gram matrix's float64 rounding level are zero singular values, not signal.
    noise_floor = eigenvalues.amax(dim=-1, keepdim=True) * gram.shape[-1] * torch.finfo(torch.float64).eps
    eigenvalues = torch.where(eigenvalues > noise_floor, eigenvalues, torch.zeros_like(eigenvalues))
    sigma = eigenvalues.sqrt()
    sigma_max = sigma.amax(dim=-1)
    nonzero = sigma_max > 0
    safe_max = torch.where(nonzero, sigma_max, torch.ones_like(sigma_max))
    threshold_rank = (sigma > rank_eps * sigma_max.unsqueeze(-1)).sum(-1).to(torch.float64) * nonzero
    nuclear = sigma.sum(-1)
    squared = eigenvalues.sum(-1)
    p = sigma / torch.where(nonzero, nuclear, torch.ones_like(nuclear)).unsqueeze(-1)
    entropy = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)
    return {
        "threshold_rank": threshold_rank,
        "nuclear_norm": nuclear,
        "frobenius_norm": squared.sqrt(),
        "stable_rank": squared / safe_max**2 * nonzero,
        "entropy_rank": torch.exp(entropy) * nonzero,
    }


@dataclass
class CategoryAccumulator:
    """Sums over the samples of one context category: per metric, per layer an array [heads, grid]."""

    counts: np.ndarray
    sums: dict[str, list[np.ndarray]]
    squares: dict[str, list[np.ndarray]]

    @classmethod
    def empty(cls, num_heads: list[int], grid_size: int) -> CategoryAccumulator:
        def zeros() -> list[np.ndarray]:
            return [np.zeros((heads, grid_size), dtype=np.float64) for heads in num_heads]

        return cls(
            counts=np.zeros(grid_size, dtype=np.int64),
            sums={metric: zeros() for metric in METRICS},
            squares={metric: zeros() for metric in METRICS},
        )

    def arrays(self) -> list[np.ndarray]:
        """Every float array in a fixed order (for flattening into one tensor to all-reduce)."""
        return [array for metric in METRICS for array in (*self.sums[metric], *self.squares[metric])]


@dataclass
class RankStats:
    """Per-layer, per-head effective-rank and norm statistics of linear-attention states over a token grid.

    layers: model layer indices of the linear-attention layers, in order.
    num_heads: value heads of each of those layers; rank_caps: min(d_k, d_v) of each layer.
    grid: token positions (number of tokens seen) at which states were observed; the last is the sample end.
    settings: how the statistics were made (rank_eps, seq_len, model name, ...); merging requires equal metric
        settings.
    categories: one accumulator per context category.
    """

    layers: list[int]
    num_heads: list[int]
    rank_caps: list[int]
    grid: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    categories: dict[str, CategoryAccumulator] = field(default_factory=dict)

    # -- accumulation --------------------------------------------------------------------------------------------
    def add(self, layer_position: int, grid_index: int, metrics: dict[str, torch.Tensor], categories: list[str]):
        """Add one observation per sample: `metrics[name]` is [batch, heads], `categories` names each batch row."""
        values = {name: metrics[name].detach().to("cpu", torch.float64).numpy() for name in METRICS}
        for row, category in enumerate(categories):
            accumulator = self._category(category)
            if layer_position == 0:
                accumulator.counts[grid_index] += 1
            for name in METRICS:
                accumulator.sums[name][layer_position][:, grid_index] += values[name][row]
                accumulator.squares[name][layer_position][:, grid_index] += values[name][row] ** 2

    def _category(self, name: str) -> CategoryAccumulator:
        if name not in self.categories:
            self.categories[name] = CategoryAccumulator.empty(self.num_heads, len(self.grid))
        return self.categories[name]

    def merge(self, other: RankStats) -> RankStats:
        """A new RankStats holding the observations of both (same model, grid and metric settings required)."""
        self.check_compatible(other)
        merged = RankStats(list(self.layers), list(self.num_heads), list(self.rank_caps), list(self.grid))
        merged.settings = dict(self.settings)
        merged.settings["num_samples"] = self.num_samples + other.num_samples
        for source in (self, other):
            for name, accumulator in source.categories.items():
                target = merged._category(name)
                target.counts += accumulator.counts
                for metric in METRICS:
                    for layer in range(len(self.layers)):
                        target.sums[metric][layer] += accumulator.sums[metric][layer]
                        target.squares[metric][layer] += accumulator.squares[metric][layer]
        return merged

    def check_compatible(self, other: RankStats) -> None:
        for attribute in ("layers", "num_heads", "rank_caps", "grid"):
            if getattr(self, attribute) != getattr(other, attribute):
                raise StatsError(
                    f"Cannot merge statistics with different {attribute}: {getattr(self, attribute)} vs "
                    f"{getattr(other, attribute)}. Calibrate both runs on the same model with the same grid."
                )
        if self.settings.get("rank_eps") != other.settings.get("rank_eps"):
            raise StatsError(
                f"Cannot merge statistics made with rank_eps={self.settings.get('rank_eps')} and "
                f"rank_eps={other.settings.get('rank_eps')}."
            )

    # -- derived views -------------------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(sum(int(acc.counts[-1]) for acc in self.categories.values())) if self.grid else 0

    @property
    def category_names(self) -> list[str]:
        return sorted(self.categories)

    def _selected(self, category: str | Iterable[str] | None) -> list[CategoryAccumulator]:
        if category is None:
            names = self.category_names
        elif isinstance(category, str):
            names = [category]
        else:
            names = list(category)
        missing = [name for name in names if name not in self.categories]
        if missing:
            raise StatsError(f"No statistics for categories {missing}; recorded: {self.category_names}.")
        if not names:
            raise StatsError("These statistics hold no observations: calibrate on at least one sample.")
        return [self.categories[name] for name in names]

    def trajectory(self, metric: str, category: str | Iterable[str] | None = None) -> list[np.ndarray]:
        """Mean of `metric` per layer as [heads, grid] over the samples of `category` (all by default)."""
        if metric not in METRICS:
            raise StatsError(f"Unknown metric {metric!r}; known metrics: {list(METRICS)}.")
        selected = self._selected(category)
        counts = sum(acc.counts for acc in selected)
        safe = np.where(counts > 0, counts, 1)
        return [sum(acc.sums[metric][layer] for acc in selected) / safe for layer in range(len(self.layers))]

    def spread(self, metric: str, category: str | Iterable[str] | None = None) -> list[np.ndarray]:
        """Standard deviation of `metric` across samples per layer as [heads, grid]."""
        selected = self._selected(category)
        counts = sum(acc.counts for acc in selected)
        safe = np.where(counts > 0, counts, 1)
        result = []
        for layer in range(len(self.layers)):
            mean = sum(acc.sums[metric][layer] for acc in selected) / safe
            square = sum(acc.squares[metric][layer] for acc in selected) / safe
            result.append(np.sqrt(np.clip(square - mean**2, 0.0, None)))
        return result

    def head_means(
        self, metric: str, category: str | Iterable[str] | None = None, aggregation: str = "mean"
    ) -> list[np.ndarray]:
        """Per layer, each head's `metric` aggregated over time: the mean over grid points, or the final point."""
        trajectories = self.trajectory(metric, category)
        if aggregation == "final":
            return [trajectory[:, -1] for trajectory in trajectories]
        if aggregation != "mean":
            raise StatsError(f"Unknown time aggregation {aggregation!r}; use 'mean' or 'final'.")
        return [trajectory.mean(axis=1) for trajectory in trajectories]

    def grid_index(self, token: int) -> int:
        """Index of the grid point nearest to `token`."""
        return int(np.argmin(np.abs(np.asarray(self.grid) - token)))

    # -- distributed ---------------------------------------------------------------------------------------------
    def all_reduce(self, device: torch.device | str = "cpu") -> RankStats:
        """Sum the statistics of every process of the default torch.distributed group (in place; returns self).

        Every process must have recorded the same categories: the category names are gathered first and missing
        ones created empty, so the flattened tensors line up.
        """
        import torch.distributed as dist

        names: list[list[str]] = [None] * dist.get_world_size()  # type: ignore[list-item]
        dist.all_gather_object(names, self.category_names)
        for name in sorted({n for group in names for n in group}):
            self._category(name)
        accumulators = [self.categories[name] for name in self.category_names]
        floats = torch.from_numpy(
            np.concatenate([array.ravel() for acc in accumulators for array in acc.arrays()])
        ).to(device)
        counts = torch.from_numpy(np.concatenate([acc.counts for acc in accumulators])).to(device)
        dist.all_reduce(floats)
        dist.all_reduce(counts)
        floats, counts = floats.cpu().numpy(), counts.cpu().numpy()
        offset = 0
        for position, acc in enumerate(accumulators):
            acc.counts[:] = counts[position * len(self.grid) : (position + 1) * len(self.grid)]
            for array in acc.arrays():
                array[...] = floats[offset : offset + array.size].reshape(array.shape)
                offset += array.size
        self.settings["num_samples"] = self.num_samples
        return self

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "layers": self.layers,
            "num_heads": self.num_heads,
            "rank_caps": self.rank_caps,
            "grid": self.grid,
            "metrics": list(METRICS),
            "settings": self.settings,
            "categories": {
                name: {
                    "counts": acc.counts.tolist(),
                    "sums": {metric: [array.tolist() for array in acc.sums[metric]] for metric in METRICS},
                    "squares": {metric: [array.tolist() for array in acc.squares[metric]] for metric in METRICS},
                }
                for name, acc in sorted(self.categories.items())
            },
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = None) -> RankStats:
        """Statistics from their `to_dict` form, checked (see `validate`); `source` names them in messages."""
        where = f"{source}: " if source else ""
        if not isinstance(values, dict):
            raise StatsError(f"{where}rank statistics must be a JSON object, got {type(values).__name__}.")
        try:
            if values.get("format_version") != FORMAT_VERSION:
                raise StatsError(
                    f"{where}unsupported rank statistics format_version={_shown(values.get('format_version'))} "
                    f"(this version of hf_rankprune reads {FORMAT_VERSION})."
                )
            lists = {}
            for name in ("layers", "num_heads", "rank_caps", "grid"):
                items = values[name]
                if not isinstance(items, list) or not all(_is_int(v) for v in items):
                    raise StatsError(f"{where}{name} must be a list of integers, got {_shown(items)}.")
                lists[name] = [int(v) for v in items]
            settings = values.get("settings", {})
            if not isinstance(settings, dict):
                raise StatsError(f"{where}settings must be a JSON object, got {type(settings).__name__}.")
            stats = cls(**lists, settings=dict(settings))
            categories = values["categories"]
            if not isinstance(categories, dict):
                raise StatsError(f"{where}categories must be a JSON object, got {type(categories).__name__}.")
            for name, acc in categories.items():
                stats.categories[name] = CategoryAccumulator(
                    counts=_array(acc["counts"], np.float64),
                    sums={m: [_array(a, np.float64) for a in acc["sums"][m]] for m in METRICS},
                    squares={m: [_array(a, np.float64) for a in acc["squares"][m]] for m in METRICS},
                )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, StatsError):
                raise
            raise StatsError(
                f"{where}malformed rank statistics: missing or invalid field {_shown(error)}. Make them again with "
                "`hf-rankprune analyze`."
            ) from error
        stats.validate(source)
        for accumulator in stats.categories.values():
            accumulator.counts = accumulator.counts.astype(np.int64)
        return stats

    def validate(self, source: str | None = None) -> None:
        """Refuse statistics that cannot be right: lengths that disagree, non-finite values, negative counts or norms,
        mean ranks outside [0, rank cap]. Raises StatsError naming the category, metric, layer and head."""
        where = f"{source}: " if source else ""
        fix = "The statistics are damaged or were edited: make them again with `hf-rankprune analyze`."

        def fail(message: str) -> None:
            raise StatsError(f"{where}{message}. {fix}")

        layers = len(self.layers)
        if len(self.num_heads) != layers or len(self.rank_caps) != layers:
            fail(f"{layers} layers but {len(self.num_heads)} head counts and {len(self.rank_caps)} rank caps")
        if any(v < 0 for v in self.layers) or list(self.layers) != sorted(set(self.layers)):
            fail(f"layers {_shown(self.layers)} are not distinct increasing indices >= 0")
        if any(v < 1 for v in self.num_heads) or any(v < 1 for v in self.rank_caps):
            fail("head counts and rank caps must be >= 1")
        if not self.grid or self.grid[0] < 1 or list(self.grid) != sorted(set(self.grid)):
            fail(f"grid {_shown(self.grid)} is not a non-empty increasing list of token positions >= 1")
        rank_eps = self.settings.get("rank_eps")
        if rank_eps is not None and (not _is_number(rank_eps) or not 0 < rank_eps < 1):
            fail(f"settings.rank_eps={_shown(rank_eps)} is not a number in (0, 1)")
        grid = len(self.grid)
        for name, acc in self.categories.items():
            label = f"category {_shown(name)}"
            counts = np.asarray(acc.counts)
            if counts.shape != (grid,):
                fail(f"{label}: {counts.size} counts for a grid of {grid} points")
            if not np.all(np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.round(counts)):
                fail(f"{label}: counts must be whole numbers >= 0, got {_shown(counts.tolist())}")
            for kind, arrays in (("sums", acc.sums), ("squares", acc.squares)):
                for metric in METRICS:
                    if len(arrays[metric]) != layers:
                        fail(f"{label}: {kind} of {metric} cover {len(arrays[metric])} layers, not {layers}")
                    for position, array in enumerate(arrays[metric]):
                        here = f"{label}, {kind} of {metric}, layer {self.layers[position]}"
                        if array.shape != (self.num_heads[position], grid):
                            fail(f"{here}: shape {list(array.shape)}, expected [{self.num_heads[position]}, {grid}]")
                        bad = ~np.isfinite(array)
                        if bad.any():
                            head, point = (int(i) for i in np.argwhere(bad)[0])
                            fail(f"{here}, head {head}: {array[head, point]} at token {self.grid[point]}")
                        cap = self.rank_caps[position] if metric in RANK_METRIC_NAMES.values() else np.inf
                        per_sample = cap if kind == "sums" else cap**2
                        limit = np.where(counts > 0, per_sample * np.maximum(counts, 1), 0.0)  # no samples: 0
                        slack = 1e-6 * np.where(np.isfinite(limit), np.maximum(limit, 1.0), 0.0)
                        outside = (array < -slack) | (array > limit + slack)
                        if outside.any():
                            head, point = (int(i) for i in np.argwhere(outside)[0])
                            mean = array[head, point] / counts[point] if counts[point] else array[head, point]
                            what = f"mean {mean:.6g}" if counts[point] else f"{mean:.6g} with no samples"
                            bound = f"[0, {cap}]" if np.isfinite(cap) else ">= 0"
                            fail(f"{here}, head {head}: {what} at token {self.grid[point]} is outside {bound}")

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RankStats:
        """Statistics from a JSON file written by `to_json_file` (rank_stats.json of `analyze` or `probe`), checked."""
        path = os.fspath(path)
        if os.path.isdir(path):
            inside = os.path.join(path, "rank_stats.json")
            hint = f"; did you mean {inside!r}?" if os.path.isfile(inside) else " (rank_stats.json written by analyze)."
            raise StatsError(f"{path!r} is a folder: give the statistics file{hint}")
        if not os.path.exists(path):
            raise StatsError(f"{path!r} does not exist: give the rank_stats.json written by `hf-rankprune analyze`.")
        try:
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StatsError(
                f"{path!r} is not a rank statistics JSON file ({_shown(error)}): give the rank_stats.json written by "
                "`hf-rankprune analyze`."
            ) from error
        return cls.from_dict(values, source=repr(path))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _array(value: Any, dtype) -> np.ndarray:
    """A numeric array from JSON lists; anything else (strings, ragged lists, objects) is a ValueError."""
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise ValueError(f"expected a list of numbers, got {type(value).__name__}")
    array = np.asarray(value, dtype=dtype)
    return array


def _shown(value: Any, limit: int = 80) -> str:
    """A short representation of a value read from a file, for messages (never the whole of a huge value)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 6, 4, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
