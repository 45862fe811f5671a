"""Every error hf_rankprune raises for bad input, under one base class.

`RankPruneError` means "the user's input is wrong, and the message says what and how to fix it": the CLI reports
these as one line with exit code 2 (`SavedCheckpointError` and `ServingError`, which are faults rather than bad
input, derive from `RuntimeError` and are reported as such). Each error also derives from the built-in exception its
callers expect (`ValueError`, `FileExistsError`), so `except ValueError` keeps working.
"""

from __future__ import annotations


class RankPruneError(Exception):
    """Base of every bad-input error: the message names the input, what is wrong with it and how to fix it."""


class UsageError(RankPruneError, ValueError):
    """A command-line input is wrong; the message says what and how to fix it."""


class ConfigError(RankPruneError, ValueError):
    """A setting has a value outside what is allowed; the message names the field, the value and the allowed set."""


class RecipeError(RankPruneError, ValueError):
    """A recipe cannot be read, has unknown keys or bad values, or does not fit the model; names file and key."""


class AdapterError(RankPruneError, ValueError):
    """The model cannot be handled: unsupported architecture or no linear-attention layers."""


class ModelLoadError(RankPruneError, ValueError):
    """The model cannot be found or is not a model this tool handles."""


class CheckpointError(RankPruneError, ValueError):
    """A checkpoint folder's weight files are unreadable or do not match its config."""


class CalibrationError(RankPruneError, ValueError):
    """Calibration cannot run on these inputs (empty data, samples shorter than the grid, non-finite states)."""


class NonFiniteStateError(CalibrationError):
    """A head's state holds NaN or inf: the model or its inputs are broken at that layer and head."""


class CalibrationDataError(RankPruneError, ValueError):
    """Calibration data cannot be read or used; the message names the source and what to do instead."""


class StatsError(RankPruneError, ValueError):
    """Statistics that cannot be combined or used as asked (different models, grids or metric settings)."""


class ImportanceScoreError(RankPruneError, ValueError):
    """An importance score cannot be computed with these inputs (no data for a score that needs it, ...)."""


class PlanError(RankPruneError, ValueError):
    """A plan is inconsistent, or does not fit the model it is applied to."""


class EvaluationError(RankPruneError, ValueError):
    """An evaluation task is unknown or cannot run, or one of its options has a value it does not take.

    `option` and `reason` (when the fault is one option's) let the CLI and recipes name the option their own way
    (`--num-keys`, `evaluation.num_keys`).
    """

    def __init__(self, message: str, option: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.reason = reason


class ModelCardError(RankPruneError, ValueError):
    """The inputs of a model card are malformed (evaluation results, template)."""


class HubPushError(RankPruneError, RuntimeError):
    """A push to the Hub failed; the message says why and what to do. The local folder is untouched."""


class OutputExistsError(RankPruneError, FileExistsError):
    """The output folder exists and holds files; nothing is overwritten unless asked."""


class OutputPathError(OutputExistsError):
    """The output path cannot be used: it is empty, overlaps an input or the working directory, holds files this tool
    did not write, or cannot be created (no permission, read-only filesystem)."""


class SavedCheckpointError(RuntimeError):
    """A checkpoint hf_rankprune just wrote would not load cleanly (a bug: nothing is left behind)."""


class ServingError(RuntimeError):
    """vLLM could not serve a checkpoint; the message carries the engine's last words."""
