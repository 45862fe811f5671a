"""RankPruneConfig's field declarations drive the recipe grammar, the command line, the plan's settings and the card's
reproduce line; the budget rule (exactly one of ratio / num_heads / target_state_bytes) is kept in one place."""

import pytest

from hf_rankprune.card import _cli_flags
from hf_rankprune.cli import build_parser
from hf_rankprune.config import (
    BUDGET_FIELDS,
    CALIBRATION,
    DEFAULT_RATIO,
    MODIFIER,
    PRUNING,
    SETTINGS,
    ConfigError,
    RankPruneConfig,
)
from hf_rankprune.recipe import CALIBRATION_FIELDS, MODIFIER_FIELDS


def test_every_field_is_declared_once_and_everything_derives_from_it():
    for spec in SETTINGS:
        assert spec.metadata["help"] and spec.metadata["recipe"] in (CALIBRATION, MODIFIER), spec.name
        assert spec.metadata["cli"] in (CALIBRATION, PRUNING, None), spec.name
    assert set(CALIBRATION_FIELDS) | set(MODIFIER_FIELDS) == {spec.name for spec in SETTINGS}
    assert BUDGET_FIELDS == ("ratio", "num_heads", "target_state_bytes")
    args = vars(build_parser().parse_args(["prune", "--out", "x"]))
    assert all(args[spec.name] is None for spec in SETTINGS if spec.metadata["cli"])  # a flag each, unset: no override
    assert "num_samples: calibration samples" in RankPruneConfig.__doc__  # the docstring shows every field's help


def test_exactly_one_budget_is_in_force():
    assert RankPruneConfig().ratio == DEFAULT_RATIO and RankPruneConfig().budget_kind() == "ratio"
    heads = RankPruneConfig(num_heads=5)
    assert heads.ratio is None and heads.budget_kind() == "num_heads" and heads.heads_to_remove(24) == 5
    with pytest.raises(ConfigError, match=r"ratio and num_heads both set the budget: give exactly one of"):
        RankPruneConfig(ratio=0.3, num_heads=5)
    # an override of the budget replaces it; a JSON round trip keeps it
    bytes_target = heads.replace(target_state_bytes=1000)
    assert (bytes_target.num_heads, bytes_target.budget_kind(), bytes_target.heads_to_remove(24)) == (
        None, "target_state_bytes", None)  # fmt: skip
    assert RankPruneConfig.from_dict(bytes_target.to_dict()) == bytes_target
    assert RankPruneConfig(ratio=0.25).heads_to_remove(24) == 6


def test_plan_settings_and_the_cards_reproduce_line_follow_the_declarations():
    config = RankPruneConfig(num_heads=5, protected_layers=[0, 2], layout="stock")
    settings = config.plan_settings()
    assert settings["num_heads"] == 5 and settings["ratio"] is None and "uniform_rounding" not in settings
    assert "kl_greedy" not in settings and "kl_greedy" in RankPruneConfig(score="kl").plan_settings()
    assert "alpha" not in RankPruneConfig(score="decay").plan_settings()  # rank settings only for rank scores
    line = _cli_flags({**settings, "calibration_samples": 16})
    assert "--num-heads 5" in line and "--ratio" not in line  # a reproduce line the command line accepts
    assert "--protected-layers 0,2" in line and "--layout stock" in line and "--num-samples 16" in line
    args = build_parser().parse_args(["prune", *line.split(), "--out", "x"])
    from hf_rankprune.cli import _config_from_args

    rebuilt = _config_from_args(args, RankPruneConfig())
    assert {name: getattr(rebuilt, name) for name in settings} == settings

