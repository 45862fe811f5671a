"""`RankPruner`: the optimum-style entry point (calibrate -> plan -> prune -> save), an `OptimumQuantizer`.

    pruner = RankPruner.from_pretrained("Qwen/Qwen3-Next-80B-A3B-Instruct", device_map="auto", ratio=0.389)
    model = pruner.prune()
    pruner.save_pretrained("out/")
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from optimum.quantization_base import OptimumQuantizer

from .arch import get_adapter
from .surgery import check_can_carry_ragged
from .calibrate import calibrate
from .config import RankPruneConfig
from .loading import DEMO_MODEL_PATH, DTYPES, ModelLoadError, load_model_and_tokenizer, resolve_model_path
from .plan import PlanError, PrunePlan
from .scoring import UniformRoundingWarning, greedy_budget, plan_from_scores, plan_from_stats, uniform_choice
from .stats import RankStats
from .surgery import apply_plan, model_plan, save_pruned

# The embedded demo model's calibration defaults (recipes/demo.yaml's): 16 samples x 512 tokens take seconds on a CPU,
# where RankPruneConfig's defaults for large models (64 x 2048) would take about 10 minutes on 2 cores.
DEMO_CALIBRATION = {"num_samples": 16, "seq_len": 512, "batch_size": 4, "grid_step": 64}


def is_demo_model(model_path: str | os.PathLike | None) -> bool:
    """`model_path` is the embedded demo model's folder."""
    try:
        return model_path is not None and Path(model_path).expanduser().resolve() == DEMO_MODEL_PATH.resolve()
    except OSError:
        return False


def default_config(model_path: str | os.PathLike | None = None) -> RankPruneConfig:
    """The settings used when none are given: `RankPruneConfig()` (the paper's: 64 samples x 2048 tokens), except
    for the embedded demo model, which gets its recipe's calibration (`DEMO_CALIBRATION`: 16 samples x 512 tokens)."""
    return RankPruneConfig(**DEMO_CALIBRATION) if is_demo_model(model_path) else RankPruneConfig()


class RankPruner(OptimumQuantizer):
    """Holds a model, its tokenizer and a `RankPruneConfig`; each stage runs the ones before it when needed."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, config: RankPruneConfig | None = None,
                 model_name: str | None = None, base_model: str | None = None):  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RankPruneConfig()
        self.model_name = model_name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        # Hub id named as `base_model` in the card; None: derived from model_name (a Hub id or Hub cache snapshot)
        self.base_model = check_base_model(base_model)
        self.adapter = get_adapter(model)  # refuses unsupported models before any work
        if self.config.budget != "uniform":  # per-layer budgets give ragged plans: refuse a model that cannot carry one
            check_can_carry_ragged(model)
        # a uniform budget can remove only some head counts: say which one it takes, and why, before any work
        self.uniform_choice = uniform_choice(self.adapter, self.config) if self.config.budget == "uniform" else None
        if self.uniform_choice is not None and self.uniform_choice.rounded:
            warnings.warn(self.uniform_choice.message(), UniformRoundingWarning, stacklevel=3)
        self._stats: RankStats | None = None
        self._importance = None  # output_scores.ImportanceScores of config.score, when it is an importance score
        self._plan: PrunePlan | None = None
        self._pruned = False
        self.source_model: str | None = None  # folder or Hub id loaded from: its processor files travel along
        # {"original": {...}, "pruned": {...}} of flat metric keys ("passkey.accuracy"): shown in the model card
        self.evaluation_results: dict[str, dict[str, float]] | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_or_path: str | os.PathLike | torch.nn.Module | None = None,
        config: RankPruneConfig | dict | None = None,
        *,
        device_map: str | dict | None = None,
        torch_dtype: str | torch.dtype | None = None,
        tokenizer: Any = None,
        base_model: str | None = None,
        **overrides: Any,
    ) -> RankPruner:
        """A pruner for a model object, a local folder or a Hub id (None: the embedded demo model); `overrides`
        replace fields of `config`. Without `config`: `default_config(model)`, i.e. `RankPruneConfig()` (64 calibration
        samples x 2048 tokens, the paper's scale) except for the embedded demo model, which gets its recipe's 16 x 512.
        `base_model`: the Hub id the card names as the base model (default: the model's id, also for a folder of the
        Hub cache)."""
        if isinstance(config, dict):
            config = RankPruneConfig.from_dict(config)
        check_base_model(base_model)
        if isinstance(model_or_path, torch.nn.Module):
            config = config or default_config(getattr(model_or_path.config, "_name_or_path", None))
            return cls(model_or_path, tokenizer, config.replace(**overrides) if overrides else config,
                       base_model=base_model)  # fmt: skip
        path = resolve_model_path(model_or_path)
        config = config or default_config(path)
        config = config.replace(**overrides) if overrides else config
        dtype = torch_dtype
        if isinstance(dtype, torch.dtype):
            names = {v: k for k, v in DTYPES.items()}
            if dtype not in names:
                raise ModelLoadError(f"torch_dtype={dtype} is not supported: choose one of {sorted(DTYPES)}.")
            dtype = names[dtype]
        model, loaded_tokenizer = load_model_and_tokenizer(path, device_map=device_map, dtype=dtype)
        pruner = cls(model, tokenizer or loaded_tokenizer, config, model_name=str(model_or_path), base_model=base_model)
        pruner.source_model = path
        return pruner

    @classmethod
    def from_recipe(cls, recipe: Any, model: str | os.PathLike | torch.nn.Module | None = None,
                    **overrides: Any) -> RankPruner:  # fmt: skip
        """A pruner set up by a recipe (YAML file, YAML string, mapping or `Recipe`); `model` wins over the recipe's
        `model:` (None there: the embedded demo model); `overrides` (RankPruneConfig fields, or `device_map`,
        `torch_dtype`, `tokenizer`) win over the recipe. A model of another architecture raises `RecipeError`."""
        from .recipe import pruner_from_recipe

        return pruner_from_recipe(cls, recipe, model, **overrides)

    # -- stages --------------------------------------------------------------------------------------------------
    def calibrate(self, data: Any = None, *, progress: bool = True) -> RankStats:
        """Run calibration; `data` overrides `config.data` (any spec `load_calibration_samples` takes, or samples)."""
        self._refuse_after_prune("calibrate")
        if hasattr(data, "input_ids"):
            samples = data
        else:
            from .data import load_calibration_samples

            if self.tokenizer is None:
                raise ValueError("Calibration data needs a tokenizer: pass tokenizer= to RankPruner.from_pretrained.")
            spec = data if data is not None else self.config.data
            samples = load_calibration_samples(
                spec, self.tokenizer, self.config.num_samples, self.config.seq_len, self.config.seed
            )
        self._stats = calibrate(self.model, samples, self.config, progress=progress, model_name=self.model_name)
        self._plan = None
        return self._stats

    def load_stats(self, stats: RankStats | str | os.PathLike) -> RankStats:
        """Use statistics from an earlier run (a RankStats or its JSON file) instead of calibrating."""
        self._refuse_after_prune("load_stats")
        self._stats = stats if isinstance(stats, RankStats) else RankStats.from_json_file(stats)
        self._plan = None
        return self._stats

    @property
    def stats(self) -> RankStats | None:
        return self._stats

    def measure_importance(self, data: Any = None, *, progress: bool = True, verbose: bool = True):
        """Measure `config.score`'s head-importance scores (kl, taylor, activation, decay; see
        `hf_rankprune.output_scores`; HIGH = important) and keep them for `plan()`. The scores that need data run on
        `data` (samples, or any spec `load_calibration_samples` takes; default `config.data`, the built-in suite
        when None) cut into config.num_samples x config.seq_len tokens; decay reads only the weights. Returns the
        `ImportanceScores`; `verbose` prints the passes it takes first. A score that needs data without a tokenizer (and no samples given) is refused before
        any work."""
        from .config import DATA_SCORES
        from .output_scores import importance_scores

        self._refuse_after_prune("measure_importance")
        if self.config.needs_rank_stats():
            raise PlanError(
                f"score={self.config.score!r} is computed from rank statistics (calibrate()); importance scores are "
                "kl, taylor, activation and decay."
            )
        samples = None
        if self.config.score in DATA_SCORES:
            if hasattr(data, "input_ids"):
                samples = data
            else:
                from .data import load_calibration_samples

                if self.tokenizer is None:
                    raise ValueError(
                        f"score={self.config.score!r} is measured on calibration data, which needs a tokenizer: pass "
                        "tokenizer= to RankPruner.from_pretrained (or samples to measure_importance)."
                    )
                spec = data if data is not None else self.config.data
                samples = load_calibration_samples(
                    spec, self.tokenizer, self.config.num_samples, self.config.seq_len, self.config.seed
                )
        budget = greedy_budget(self.adapter, self.config) if self.config.score == "kl" and self.config.kl_greedy else None
        self._importance = importance_scores(self.model, self.config, samples, budget=budget, progress=progress,
                                             verbose=verbose)  # fmt: skip
        self._plan = None
        return self._importance

    def plan(self) -> PrunePlan:
        """The heads to remove under the config: from rank statistics (calibrating first if none are there) for the
        rank scores, from `measure_importance()` (run first if needed, no rank calibration) for the importance
        scores."""
        if self._plan is None:
            if self._pruned:
                raise PlanError("This pruner already pruned its model; create a new RankPruner to prune it again.")
            if self.config.needs_rank_stats():
                if self._stats is None:
                    self.calibrate()
                self._plan = plan_from_stats(self.adapter, self._stats, self.config)
            else:
                if self._importance is None:
                    self.measure_importance()
                measured = dict(self._importance.measured)
                measured["calibration_samples"] = measured.get("samples")
                measured["calibration_seq_len"] = measured.get("seq_len")
                self._plan = plan_from_scores(self.adapter, self._importance.scores, self.config, measured)
        return self._plan

    @property
    def pruning_plan(self) -> PrunePlan | None:
        """After `prune()`, the plan relative to the original model (composed over earlier prunings); before, the
        plan chosen for this model (None until planned)."""
        return model_plan(self.model) if self._pruned else self._plan

    def prune(self) -> torch.nn.Module:
        """Calibrate (if needed), plan (if needed) and physically remove the chosen heads; returns the model."""
        if not self._pruned:
            apply_plan(self.model, self.plan())
            self._pruned = True
        return self.model

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False,
                        max_shard_size: int | str | None = None) -> Path:  # fmt: skip
        """Write the pruned model, tokenizer, plan and model card (README.md, figures/) (prunes first if needed);
        nothing half-written on failure."""
        from .card import write_pruner_card

        self.prune()
        return save_pruned(self.model, save_directory, self.tokenizer, overwrite=overwrite,
                           max_shard_size=max_shard_size, source_model=self.source_model,
                           write_extra=lambda folder: write_pruner_card(self, folder))  # fmt: skip

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | bool | None = None,
                    revision: str | None = None, commit_message: str | None = None, create_pr: bool = False):
        """Prune (if needed), save into a temporary folder and push it to the Hub in one commit (weights, config,
        tokenizer, plan, model card, figures); returns the `CommitInfo`. Raises `ValueError` for an invalid repo id
        (before any work) and `hub.HubPushError` when the Hub fails. The token is never written anywhere."""
        import tempfile

        from .card import write_pruner_card
        from .hub import _check_repo_id, push_folder

        _check_repo_id(repo_id)
        self.prune()
        with tempfile.TemporaryDirectory(prefix="hf_rankprune-push-") as tmp:
            folder = save_pruned(self.model, Path(tmp) / "model", self.tokenizer, source_model=self.source_model,
                                 write_extra=lambda staging: write_pruner_card(self, staging, repo_id=repo_id))  # fmt: skip
            return push_folder(folder, repo_id, private=private, token=token, revision=revision,
                               commit_message=commit_message, create_pr=create_pr)  # fmt: skip

    def quantize(self, save_dir: str | os.PathLike, file_prefix: str | None = None, **kwargs: Any) -> Path:
        """The `OptimumQuantizer` entry point: prune and save into `save_dir`."""
        if file_prefix is not None:
            raise ValueError("file_prefix is not supported: pruned models are saved as standard safetensors shards.")
        return self.save_pretrained(save_dir, **kwargs)

    def _refuse_after_prune(self, action: str) -> None:
        if self._pruned:
            raise PlanError(
                f"Cannot {action} after prune(): the model's heads changed. Create a new RankPruner on the pruned "
                "model to prune it again (its plan composes with the first)."
            )


def check_base_model(base_model: str | None) -> str | None:
    """`base_model` if it is a valid Hub model id (or None); a clear error otherwise, before any work."""
    if base_model is None:
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if not isinstance(base_model, str) or base_model.count("/") != 1:
            raise HFValidationError("expected 'namespace/name'")
        validate_repo_id(base_model)
    except HFValidationError as error:
        raise ModelLoadError(
            f"base_model {str(base_model)[:200]!r} is not a Hub model id: give 'namespace/name', e.g. "
            f"'Qwen/Qwen3.5-9B' ({error})."
        ) from error
    return base_model
