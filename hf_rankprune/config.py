"""`RankPruneConfig`: every knob of calibration, metric, scoring and budget, in one validated object.

Defaults follow the paper (PAPER.md): relative-threshold rank with eps 1e-4, nuclear norm, Joint Rank-Norm score
with alpha 0.5, 38.9% of heads removed under one global budget, most saturated (highest-score) heads removed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError  # noqa: F401 (re-exported)
from .utils import shown

NORMS = ("nuclear", "frobenius")
RANK_METRICS = ("threshold", "stable", "entropy")
RANK_SCORES = ("joint", "rank", "norm", "random")  # computed from RankStats (calibrated state ranks and norms)
# head-importance scores (hf_rankprune.output_scores): a HIGH score means an IMPORTANT head
IMPORTANCE_SCORES = ("kl", "taylor", "activation", "decay")
DATA_SCORES = ("kl", "taylor", "activation")  # importance scores measured on calibration samples (decay: data-free)
SCORES = RANK_SCORES + IMPORTANCE_SCORES
DIRECTIONS = ("saturated", "low_rank", "random")
BUDGETS = ("global", "per_layer", "uniform")
UNIFORM_ROUNDINGS = ("down", "nearest", "up")
LAYOUTS = ("auto", "stock")
TIME_AGGREGATIONS = ("mean", "final")



@dataclass
class RankPruneConfig:
    """Settings of one hf_rankprune run (calibration -> statistics -> scores -> plan).

    Calibration:
        num_samples: calibration samples (fixed-length token windows).
        seq_len: tokens per sample; the paper's stability statistics compare t=128 with t=2048.
        batch_size: samples per forward pass.
        grid_step: observe every head's state every `grid_step` tokens, plus at the end of the sample.
        grid: explicit token positions to observe at instead of the regular grid (the end is always added).
        data: calibration data specs (strings: a file, a dataset name, or "builtin" / "builtin:<category>");
            None uses the built-in offline context suite.
        seed: seeds sample selection and random scores.
    Metric:
        rank_eps: relative threshold of the effective rank, #{sigma_i > eps * sigma_1} (paper Eq. 6).
        norm: "nuclear" (paper) or "frobenius"; the norm term of the score.
        rank_metric: which rank enters the score: "threshold" (paper), "stable" or "entropy".
        time_aggregation: "mean" over the grid (paper) or the "final" grid point only.
    Scoring:
        score: "joint" (Joint Rank-Norm, Eq. 14), "rank", "norm" or "random" (from the calibrated state ranks and
            norms), or a head-importance score (hf_rankprune.output_scores; a HIGH score means an IMPORTANT head):
            "kl" (KL of the next-token distributions when the head's output is zeroed), "taylor" (|mask * dL/dmask|
            of a head mask), "activation" (Minitron-style norm of the head's output channels), both on the
            calibration samples; "decay" (data-free, from A_log / dt_bias: the log of the head's memory length).
        kl_greedy: with score "kl", remove one head at a time and re-score the remaining heads after each removal
            (one forward per remaining head per batch per removal) instead of scoring once.
        alpha: weight of the rank term in the joint score (the paper did not disclose it).
        direction: which end of the score goes. "saturated" always removes the HIGHEST scores, "low_rank" always
            the LOWEST, "random" random heads. None (default) takes the score's natural direction: "saturated" for
            the rank scores (the paper's most saturated heads), "low_rank" for the importance scores (the least
            important heads). The plan's settings record the direction used.
    Budget (exactly one of ratio / num_heads / target_state_bytes is used, in that order of precedence if the
    later ones are unset):
        ratio: fraction of all linear-attention value heads to remove (0.389 = 448 of 1152 on Qwen3-Next-80B).
        num_heads: number of value heads to remove.
        target_state_bytes: remove heads until the linear state of one sequence fits in this many bytes.
        budget: "global" (one ranking across layers, paper), "per_layer" (the same fraction in each layer) or
            "uniform" (same count in every layer and key group: a stock configuration loads the result).
        uniform_rounding: a uniform budget can remove only some head counts (the same number of value heads from
            every key group, or whole key groups, in every layer): "down" (default) takes the nearest achievable
            count at or below the request and refuses when there is none, "nearest" the closest, "up" the nearest
            at or above. A byte target takes the smallest count that meets it.
        min_heads_per_layer: value heads every linear layer keeps at least.
        protected_layers: model layer indices whose heads are never removed.
        layout: how the pruned layers are laid out. "auto": stock modules when the plan has equal consecutive key
            groups with the same counts in every layer, ragged modules (loaded through hf_rankprune or remote code)
            otherwise. "stock": every layer keeps the same number of value heads (a "per_layer" budget rounds to
            it) and key heads are replicated where groups would be unequal, so the checkpoint is a stock
            configuration that stock transformers and serving engines (vLLM, SGLang) load as it is.
    """

    # calibration
    num_samples: int = 64
    seq_len: int = 2048
    batch_size: int = 1
    grid_step: int = 64
    grid: list[int] | None = None
    data: list[str] | None = None
    seed: int = 0
    # metric
    rank_eps: float = 1e-4
    norm: str = "nuclear"
    rank_metric: str = "threshold"
    time_aggregation: str = "mean"
    # scoring
    score: str = "joint"
    kl_greedy: bool = False
    alpha: float = 0.5
    direction: str | None = None
    # budget
    ratio: float | None = 0.389
    num_heads: int | None = None
    target_state_bytes: int | None = None
    budget: str = "global"
    uniform_rounding: str = "down"
    min_heads_per_layer: int = 1
    protected_layers: list[int] = field(default_factory=list)
    layout: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        _positive_int(self, "num_samples")
        _positive_int(self, "seq_len")
        _positive_int(self, "batch_size")
        _positive_int(self, "grid_step")
        _int(self, "seed")
        if self.grid is not None:
            if not isinstance(self.grid, (list, tuple)) or not self.grid:
                raise ConfigError(f"grid={shown(self.grid)} is not allowed: give a non-empty list of token positions.")
            for position in self.grid:
                if isinstance(position, bool) or not isinstance(position, int) or position < 1:
                    raise ConfigError(f"grid={shown(self.grid)} is not allowed: every position must be an int >= 1.")
            if list(self.grid) != sorted(set(self.grid)):
                raise ConfigError(f"grid={shown(self.grid)} is not allowed: positions must be strictly increasing.")
            self.grid = list(self.grid)
        if self.data is not None:
            if isinstance(self.data, str):
                self.data = [self.data]
            if not isinstance(self.data, list) or not all(isinstance(d, str) and d for d in self.data):
                raise ConfigError(f"data={shown(self.data)} is not allowed: give a list of non-empty strings or None.")
        _number(self, "rank_eps", low=0.0, high=1.0, low_open=True, high_open=True)
        _choice(self, "norm", NORMS)
        _choice(self, "rank_metric", RANK_METRICS)
        _choice(self, "time_aggregation", TIME_AGGREGATIONS)
        _choice(self, "score", SCORES)
        _number(self, "alpha", low=0.0, high=1.0)
        if self.direction is not None:
            _choice(self, "direction", DIRECTIONS)
        if not isinstance(self.kl_greedy, bool):
            _fail(self, "kl_greedy", "it must be true or false")
        if self.ratio is not None:
            _number(self, "ratio", low=0.0, high=1.0, low_open=True, high_open=True)
        if self.num_heads is not None:
            _positive_int(self, "num_heads")
        if self.target_state_bytes is not None:
            _positive_int(self, "target_state_bytes")
        if self.ratio is None and self.num_heads is None and self.target_state_bytes is None:
            raise ConfigError("No budget is set: give one of ratio, num_heads or target_state_bytes.")
        _choice(self, "budget", BUDGETS)
        _choice(self, "uniform_rounding", UNIFORM_ROUNDINGS)
        _choice(self, "layout", LAYOUTS)
        _positive_int(self, "min_heads_per_layer")
        if not isinstance(self.protected_layers, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.protected_layers
        ):
            raise ConfigError(
                f"protected_layers={shown(self.protected_layers)} is not allowed: give a list of layer indices (ints >= 0)."
            )
        self.protected_layers = list(self.protected_layers)

    def grid_positions(self, seq_len: int | None = None) -> list[int]:
        """Token positions (1-based counts of tokens seen) at which states are observed for samples of `seq_len`."""
        seq_len = self.seq_len if seq_len is None else seq_len
        points = self.grid if self.grid is not None else list(range(self.grid_step, seq_len, self.grid_step))
        points = [p for p in points if p < seq_len]
        return points + [seq_len]

    def removal_direction(self) -> str:
        """The direction in force: `direction`, or the score's natural one when it is None ("saturated", remove
        the highest, for the rank scores; "low_rank", remove the lowest, i.e. the least important heads, for the
        importance scores)."""
        if self.direction is not None:
            return self.direction
        return "low_rank" if self.score in IMPORTANCE_SCORES else "saturated"

    def needs_rank_stats(self) -> bool:
        """The score is computed from calibrated `RankStats` (the importance scores are not)."""
        return self.score in RANK_SCORES

    def budget_kind(self) -> str:
        """Which budget field is in force: 'num_heads', 'target_state_bytes' or 'ratio'."""
        if self.num_heads is not None:
            return "num_heads"
        if self.target_state_bytes is not None:
            return "target_state_bytes"
        return "ratio"

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RankPruneConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"RankPruneConfig.from_dict needs a mapping, got {type(values).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown setting(s) {unknown}; known settings are: {sorted(known)}.")
        return cls(**values)

    def replace(self, **overrides: Any) -> RankPruneConfig:
        """A copy with `overrides` applied and validated (unknown names are an error)."""
        values = self.to_dict()
        values.update(overrides)
        return type(self).from_dict(values)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string() + "\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RankPruneConfig:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


def _fail(config: RankPruneConfig, name: str, allowed: str) -> None:
    raise ConfigError(f"{name}={shown(getattr(config, name))} is not allowed: {allowed}.")


def _int(config: RankPruneConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(config, name, "it must be an integer")


def _positive_int(config: RankPruneConfig, name: str) -> None:
    _int(config, name)
    if getattr(config, name) < 1:
        _fail(config, name, "it must be an integer >= 1")


def _choice(config: RankPruneConfig, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(config, name) not in allowed:
        _fail(config, name, f"choose one of {list(allowed)}")


def _number(
    config: RankPruneConfig, name: str, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(config, name, "it must be a finite number")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        _fail(config, name, f"it must lie in {interval}")
