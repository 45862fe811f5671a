"""`RankPruneConfig`: every knob of calibration, metric, scoring and budget, in one validated object.

Defaults follow the paper (PAPER.md): relative-threshold rank with eps 1e-4, nuclear norm, Joint Rank-Norm score
with alpha 0.5, 38.9% of heads removed under one global budget, most saturated (highest-score) heads removed.

Each field declares itself once, with `setting(...)`: its help text, its recipe section, its command-line group,
whether the plan records it, its allowed values and its check. The recipe grammar (`recipe.py`), the command line
(`cli.py`), the settings a plan records (`plan_from_scores`) and the model card's reproduce line (`card.py`) are all
derived from these declarations, so a new option is one field here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
GRANULARITIES = ("head", "group")
TIME_AGGREGATIONS = ("mean", "final")

DEFAULT_RATIO = 0.389  # the paper's budget (448 of 1152 heads on Qwen3-Next-80B), used when no budget is given
# The embedded demo model's calibration defaults (recipes/demo.yaml's): 16 samples x 512 tokens take seconds on a CPU,
# where RankPruneConfig's defaults for large models (64 x 2048) would take about 10 minutes on 2 cores.
DEMO_CALIBRATION = {"num_samples": 16, "seq_len": 512, "batch_size": 4, "grid_step": 64}

# Recipe sections (`calibration:` and the RankPruningModifier's keyword arguments) and command-line flag groups
# (`analyze` takes the calibration flags, `prune` and `probe` both groups).
CALIBRATION = "calibration"
MODIFIER = "modifier"
PRUNING = "pruning"

Check = Callable[[Any, str], None]


# -- checks (each raises ConfigError naming the field, the value and what is allowed) ----------------------------
def _fail(config: Any, name: str, allowed: str) -> None:
    raise ConfigError(f"{name}={shown(getattr(config, name))} is not allowed: {allowed}.")


def _int(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(config, name, "it must be an integer")


def _positive_int(config: Any, name: str) -> None:
    _int(config, name)
    if getattr(config, name) < 1:
        _fail(config, name, "it must be an integer >= 1")


def _switch(config: Any, name: str) -> None:
    if not isinstance(getattr(config, name), bool):
        _fail(config, name, "it must be true or false")


def _in_interval(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    def check(config: Any, name: str) -> None:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(config, name, "it must be a finite number")
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            _fail(config, name, f"it must lie in {interval}")

    return check


def _grid(config: Any, name: str) -> None:
    grid = config.grid
    if not isinstance(grid, (list, tuple)) or not grid:
        raise ConfigError(f"grid={shown(grid)} is not allowed: give a non-empty list of token positions.")
    for position in grid:
        if isinstance(position, bool) or not isinstance(position, int) or position < 1:
            raise ConfigError(f"grid={shown(grid)} is not allowed: every position must be an int >= 1.")
    if list(grid) != sorted(set(grid)):
        raise ConfigError(f"grid={shown(grid)} is not allowed: positions must be strictly increasing.")
    config.grid = list(grid)


def _data_specs(config: Any, name: str) -> None:
    if isinstance(config.data, str):
        config.data = [config.data]
    if not isinstance(config.data, list) or not all(isinstance(d, str) and d for d in config.data):
        raise ConfigError(f"data={shown(config.data)} is not allowed: give a list of non-empty strings or None.")


def _layer_indices(config: Any, name: str) -> None:
    layers = config.protected_layers
    if not isinstance(layers, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers
    ):
        raise ConfigError(f"protected_layers={shown(layers)} is not allowed: give a list of layer indices (ints >= 0).")
    config.protected_layers = list(layers)


def check_declared_fields(settings: Any) -> None:
    """Check every field of the dataclass `settings` by the `choices` and `check` its metadata declares (None, the
    value of an unset optional field, is not checked); the first bad value raises ConfigError."""
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if value is None and spec.default is None:
            continue
        choices, check = spec.metadata["choices"], spec.metadata["check"]
        if choices is not None and value not in choices:
            _fail(settings, spec.name, f"choose one of {list(choices)}")
        if check is not None:
            check(settings, spec.name)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    recipe: str,
    cli: str | None = None,
    plan: bool = False,
    scores: tuple[str, ...] = SCORES,
    choices: tuple[Any, ...] | None = None,
    check: Check | None = None,
    budget: bool = False,
    metavar: str | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A `RankPruneConfig` field and everything the rest of the package derives from it.

    Args:
        help: what the setting does (the class docstring, `--help` and the recipe documentation show it).
        recipe: its recipe section, CALIBRATION (`calibration:`) or MODIFIER (the RankPruningModifier's arguments).
        cli: its command-line group (CALIBRATION or PRUNING; the flag is `--name-with-dashes`), None for none.
        plan: the plan's settings record it (and the model card's reproduce line gives its flag).
        scores: the scores it applies to; the plan records it only under those.
        choices: the allowed values (checked here, and the flag's choices); a None default also allows None.
        check: `check(config, name)` raises ConfigError for a bad value (None values of optional fields are not
            checked); it may normalise the value (a tuple to a list).
        budget: one of the budget amounts, of which exactly one is in force.
        metavar: how `--help` shows a list-valued flag's value.
    """
    metadata = {"help": help, "recipe": recipe, "cli": cli, "plan": plan, "scores": scores, "choices": choices,
                "check": check, "budget": budget, "metavar": metavar}  # fmt: skip
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass
class RankPruneConfig:
    """Settings of one hf_rankprune run (calibration -> statistics -> scores -> plan).

    Budget: exactly one of ratio / num_heads / target_state_bytes is in force; with none given, ratio is
    DEFAULT_RATIO (0.389). `replace` (and a recipe override) that sets one of them clears the other two.
    """

    # calibration
    data: list[str] | None = setting(
        None, recipe=CALIBRATION, cli=CALIBRATION, check=_data_specs, metavar="SPEC",
        help="calibration data specs: a .txt/.jsonl/.parquet file, 'builtin', 'builtin:<category>' or "
        "'hf:<dataset>' (a flag is repeatable; default: the built-in offline context suite)",
    )  # fmt: skip
    num_samples: int = setting(
        64, recipe=CALIBRATION, cli=CALIBRATION, check=_positive_int,
        help="calibration samples (fixed-length token windows)",
    )  # fmt: skip
    seq_len: int = setting(
        2048, recipe=CALIBRATION, cli=CALIBRATION, check=_positive_int,
        help="tokens per calibration sample; the paper's stability statistics compare t=128 with t=2048",
    )  # fmt: skip
    batch_size: int = setting(
        1, recipe=CALIBRATION, cli=CALIBRATION, check=_positive_int, help="calibration samples per forward pass"
    )
    grid_step: int = setting(
        64, recipe=CALIBRATION, cli=CALIBRATION, check=_positive_int,
        help="observe every head's state every this many tokens, plus at the end of the sample",
    )  # fmt: skip
    grid: list[int] | None = setting(
        None, recipe=CALIBRATION, check=_grid,
        help="explicit token positions to observe at instead of the regular grid (the end is always added)",
    )  # fmt: skip
    seed: int = setting(
        0, recipe=CALIBRATION, cli=CALIBRATION, plan=True, check=_int,
        help="seeds sample selection and random scores",
    )  # fmt: skip
    # metric
    rank_eps: float = setting(
        1e-4, recipe=MODIFIER, cli=CALIBRATION, plan=True, scores=RANK_SCORES,
        check=_in_interval(0.0, 1.0, low_open=True, high_open=True),
        help="relative threshold of the effective rank, #{sigma_i > eps * sigma_1} (paper Eq. 6)",
    )  # fmt: skip
    norm: str = setting(
        "nuclear", recipe=MODIFIER, cli=PRUNING, plan=True, scores=RANK_SCORES, choices=NORMS,
        help="the norm term of the score: 'nuclear' (paper) or 'frobenius'",
    )  # fmt: skip
    rank_metric: str = setting(
        "threshold", recipe=MODIFIER, cli=PRUNING, plan=True, scores=RANK_SCORES, choices=RANK_METRICS,
        help="which rank enters the score: 'threshold' (paper), 'stable' or 'entropy'",
    )  # fmt: skip
    time_aggregation: str = setting(
        "mean", recipe=MODIFIER, cli=PRUNING, plan=True, scores=RANK_SCORES, choices=TIME_AGGREGATIONS,
        help="'mean' over the calibration grid (paper) or the 'final' grid point only",
    )  # fmt: skip
    # scoring
    score: str = setting(
        "joint", recipe=MODIFIER, cli=PRUNING, plan=True, choices=SCORES,
        help="how heads are scored: from the calibrated state ranks and norms, 'joint' (Joint Rank-Norm, paper "
        "Eq. 14), 'rank', 'norm', 'random'; or by head importance (hf_rankprune.output_scores, HIGH = important): "
        "'kl' (KL of the next-token distributions with the head's output zeroed: one forward per head per batch), "
        "'taylor' (|mask x dL/dmask| of a head mask: one backward per batch), 'activation' (Minitron-style norm of "
        "the head's output channels), all three on the calibration samples without rank calibration, or 'decay' "
        "(data-free, from A_log/dt_bias: the log of the head's memory length)",
    )  # fmt: skip
    kl_greedy: bool = setting(
        False, recipe=MODIFIER, cli=PRUNING, plan=True, scores=("kl",), check=_switch,
        help="with score 'kl': remove one head at a time and re-score the remaining heads after each removal "
        "(about one forward per remaining head per batch per removal) instead of scoring once",
    )  # fmt: skip
    retrieval_mix: float = setting(
        0.25, recipe=MODIFIER, cli=PRUNING, plan=True, scores=DATA_SCORES, check=_in_interval(0.0, 1.0),
        help="with score 'kl', 'taylor' or 'activation': the fraction of the calibration samples replaced by "
        "retrieval documents (passkey-like: a key hidden in filler at a random depth, asked for at the end; seeded, "
        "never an evaluation key: hf_rankprune.data.retrieval), so that the heads retrieval needs score as "
        "important; 0 measures on the calibration text only. Default 0.25 with answer_weight 200, measured on the "
        "demo model at 12 of 32 heads (kl, 16 x 512 tokens, 4 of them documents): passkey 1.00 at perplexity "
        "1.125x the original, where mix 0 gives passkey 0.51 at 1.133x; larger mixes keep passkey but cost "
        "perplexity (0.5: 1.148x, 1.0: 1.163x). A document needs about 70 tokens (the demo tokenizer's; shorter "
        "samples measure the text only, and the plan says so)",
    )  # fmt: skip
    answer_weight: float = setting(
        200.0, recipe=MODIFIER, cli=PRUNING, plan=True, scores=("kl", "taylor"),
        check=_in_interval(0.0, 10000.0, low_open=True),
        help="with score 'kl' or 'taylor' and a retrieval_mix: how much the prediction of each answer token of a "
        "retrieval document counts in the weighted mean KL / loss, every other prediction counting 1. The default "
        "200 gives the demo model's 24 answer tokens about a third of the weight of its 16 x 512-token samples; "
        "weights up to 50 left the chosen heads as the filler of the documents alone chose them (passkey 0.81)",
    )  # fmt: skip
    alpha: float = setting(
        0.5, recipe=MODIFIER, cli=PRUNING, plan=True, scores=RANK_SCORES, check=_in_interval(0.0, 1.0),
        help="weight of the rank term in the joint score (the paper did not disclose it)",
    )  # fmt: skip
    direction: str | None = setting(
        None, recipe=MODIFIER, cli=PRUNING, plan=True, choices=DIRECTIONS,
        help="which end of the score goes: 'saturated' removes the highest scores, 'low_rank' the lowest, 'random' "
        "random heads; unset: the score's natural direction, 'saturated' for the rank scores (the paper's most "
        "saturated heads), 'low_rank' for the importance scores (the least important heads; on the command line, "
        "an importance --score without --direction also replaces a recipe's direction). The plan records the "
        "direction used",
    )  # fmt: skip
    # budget
    budget: str = setting(
        "global", recipe=MODIFIER, cli=PRUNING, plan=True, choices=BUDGETS,
        help="'global' (one ranking across layers, paper), 'per_layer' (the same fraction in each layer) or "
        "'uniform' (the same count in every layer and key group: a stock configuration loads the result)",
    )  # fmt: skip
    ratio: float | None = setting(
        None, recipe=MODIFIER, cli=PRUNING, plan=True, budget=True,
        check=_in_interval(0.0, 1.0, low_open=True, high_open=True),
        help="fraction of all linear-attention value heads to remove (0.389 = 448 of 1152 on Qwen3-Next-80B)",
    )  # fmt: skip
    num_heads: int | None = setting(
        None, recipe=MODIFIER, cli=PRUNING, plan=True, budget=True, check=_positive_int,
        help="number of value heads to remove",
    )  # fmt: skip
    target_state_bytes: int | None = setting(
        None, recipe=MODIFIER, cli=PRUNING, plan=True, budget=True, check=_positive_int,
        help="remove heads until the linear state of one sequence fits in this many bytes",
    )  # fmt: skip
    uniform_rounding: str = setting(
        "down", recipe=MODIFIER, cli=PRUNING, choices=UNIFORM_ROUNDINGS,
        help="a uniform budget can remove only some head counts (the same number of value heads from every key "
        "group, or whole key groups, in every layer): 'down' takes the nearest achievable count at or below the "
        "request and refuses when there is none, 'nearest' the closest, 'up' the nearest at or above; a byte target "
        "takes the smallest count that meets it",
    )  # fmt: skip
    min_heads_per_layer: int = setting(
        1, recipe=MODIFIER, cli=PRUNING, plan=True, check=_positive_int,
        help="value heads every linear layer keeps at least",
    )  # fmt: skip
    protected_layers: list[int] = setting(
        recipe=MODIFIER, cli=PRUNING, plan=True, check=_layer_indices, metavar="I,J,...", default_factory=list,
        help="model layer indices whose heads are never removed",
    )  # fmt: skip
    granularity: str = setting(
        "head", recipe=MODIFIER, cli=PRUNING, plan=True, choices=GRANULARITIES,
        help="what the budget removes: 'head' value heads (a key group goes with its last value head), 'group' whole "
        "key groups (a Mamba2 SSD group with its B/C, a gated-delta-rule key head with its value heads), ranked by "
        "their heads' mean score; a head count the groups cannot make exactly becomes the nearest they can (ties: "
        "the fewer)",
    )  # fmt: skip
    layout: str = setting(
        "auto", recipe=MODIFIER, cli=PRUNING, plan=True, choices=LAYOUTS,
        help="how the pruned layers are laid out: 'auto' writes stock modules when the plan has equal consecutive "
        "key groups with the same counts in every layer, ragged modules (loaded through hf_rankprune or remote "
        "code) otherwise; 'stock' keeps the same number of value heads in every layer (a per_layer budget rounds "
        "to it) and replicates key heads where groups would be unequal, so stock transformers and serving engines "
        "(vLLM, SGLang) load the checkpoint as it is",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field by its declaration, then the budget rule (filling in DEFAULT_RATIO when unset)."""
        check_declared_fields(self)
        if not check_one_budget(self.__dict__):
            self.ratio = DEFAULT_RATIO

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

    # -- the budget ---------------------------------------------------------------------------------------------
    def budget_kind(self) -> str:
        """Which budget field is in force: 'ratio', 'num_heads' or 'target_state_bytes'."""
        return next(name for name in BUDGET_FIELDS if getattr(self, name) is not None)

    def heads_to_remove(self, total_heads: int) -> int | None:
        """Value heads the budget removes out of `total_heads`; None for a byte target, whose head count depends on
        the heads' state sizes."""
        if self.num_heads is not None:
            return self.num_heads
        if self.ratio is not None:
            return int(round(self.ratio * total_heads))
        return None

    def plan_settings(self) -> dict[str, Any]:
        """The settings a plan records (and its model card shows): the fields declared `plan=True`, for the scores
        they apply to (a rank metric's settings are left out under an importance score)."""
        return {
            spec.name: _copy(getattr(self, spec.name))
            for spec in dataclasses.fields(self)
            if spec.metadata["plan"] and self.score in spec.metadata["scores"]
        }

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RankPruneConfig:
        if not isinstance(values, Mapping):
            raise ConfigError(f"RankPruneConfig.from_dict needs a mapping, got {type(values).__name__}.")
        known = [spec.name for spec in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"Unknown setting(s) {unknown}; known settings are: {sorted(known)}.")
        return cls(**values)

    def replace(self, **overrides: Any) -> RankPruneConfig:
        """A copy with `overrides` applied and validated (unknown names are an error). Setting one budget field
        clears the other two, so an override of the budget always takes effect."""
        values = self.to_dict()
        if check_one_budget(overrides):
            values.update(dict.fromkeys(BUDGET_FIELDS))
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


SETTINGS: tuple[dataclasses.Field, ...] = dataclasses.fields(RankPruneConfig)
BUDGET_FIELDS = tuple(spec.name for spec in SETTINGS if spec.metadata["budget"])
_TYPES = typing.get_type_hints(RankPruneConfig)


def settings_in(*, recipe: str | None = None, cli: str | None = None) -> tuple[dataclasses.Field, ...]:
    """The fields of a recipe section (CALIBRATION, MODIFIER) and/or a command-line group (CALIBRATION, PRUNING)."""
    return tuple(
        spec for spec in SETTINGS
        if (recipe is None or spec.metadata["recipe"] == recipe) and (cli is None or spec.metadata["cli"] == cli)
    )  # fmt: skip


def value_type(spec: dataclasses.Field) -> Any:
    """The field's type without `| None`: bool, int, float, str, list[str] or list[int]."""
    kind = _TYPES[spec.name]
    if isinstance(kind, types.UnionType):
        return next(part for part in typing.get_args(kind) if part is not type(None))
    return kind


def cli_flag(name: str) -> str:
    """The command-line flag of a field: `--num-heads` for num_heads."""
    return "--" + name.replace("_", "-")


def check_one_budget(values: Mapping[str, Any], name: Callable[[str], str] = str) -> str | None:
    """The one budget rule: at most one of BUDGET_FIELDS is set (not None) in `values`; returns it (None when none
    is). More than one raises ConfigError naming them with `name` (e.g. `cli_flag` for command-line messages)."""
    given = [field for field in BUDGET_FIELDS if values.get(field) is not None]
    if len(given) > 1:
        raise ConfigError(
            f"{' and '.join(map(name, given))} {'both' if len(given) == 2 else 'all'} set the budget: give exactly one "
            f"of {[name(field) for field in BUDGET_FIELDS]}."
        )
    return given[0] if given else None


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _docstring() -> str:
    """The class docstring with every field's help, by recipe section (written once, in the declarations)."""
    lines = [RankPruneConfig.__doc__.rstrip(), ""]
    for section, title in ((CALIBRATION, "Calibration (recipe `calibration:`)"),
                           (MODIFIER, "Metric, scoring and budget (recipe RankPruningModifier)")):  # fmt: skip
        lines.append(f"    {title}:")
        for spec in settings_in(recipe=section):
            lines.append(textwrap.fill(f"{spec.name}: {spec.metadata['help']}.", 116, initial_indent=" " * 8,
                                       subsequent_indent=" " * 12))  # fmt: skip
    return "\n".join(lines) + "\n"


RankPruneConfig.__doc__ = _docstring()
