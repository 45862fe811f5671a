"""`RankPruner`: the optimum-style entry point (measure -> plan -> prune -> save), an `OptimumQuantizer`.

    pruner = RankPruner.from_pretrained("Qwen/Qwen3-Next-80B-A3B-Instruct", device_map="auto", ratio=0.389)
    model = pruner.prune()
    pruner.save_pretrained("out/")

    RankPruner.from_recipe("recipes/demo.yaml").run()   # the whole pipeline, as `hf-rankprune prune` runs it
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optimum.quantization_base import OptimumQuantizer

from .arch import get_adapter
from .calibrate import calibrate
from .config import DATA_SCORES, DEMO_CALIBRATION, RankPruneConfig
from .errors import CalibrationDataError
from .loading import (
    DEMO_MODEL_NAME,
    DEMO_MODEL_PATH,
    DTYPES,
    ModelLoadError,
    load_config,
    load_model_and_tokenizer,
    resolve_model_path,
)
from .plan import DEMO_ORIGINAL, ORIGINAL_MODEL_KEY, PlanError, PrunePlan
from .recipe import Recipe, check_architecture, load_recipe
from .scoring import UniformRoundingWarning, greedy_budget, plan_from_scores, plan_from_stats, uniform_choice
from .stats import RankStats
from .surgery import apply_plan, check_can_carry_ragged, model_plan, save_pruned

__all__ = ["DEMO_CALIBRATION", "RankPruner", "RunResult", "default_config", "is_demo_model"]


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


@dataclass
class RunResult:
    """What `RankPruner.run` did: the plan (relative to the original model), the folder written, the evaluation
    before and after ({"original": {...}, "pruned": {...}}), and the Hub commit of the push."""

    plan: PrunePlan
    folder: Path | None = None
    evaluation: dict[str, dict[str, float]] | None = None
    commit: Any = None


class RankPruner(OptimumQuantizer):
    """Holds a model, its tokenizer, a `RankPruneConfig` and optionally the `Recipe` it came from; each stage runs
    the ones before it when needed, and `run()` runs them all.

    Attributes the model card reads: `model_name` (how the card names the original), `base_model` (its Hub id),
    `source_model` (the folder or Hub id loaded from), `recipe`, `stats`, and `evaluation_results`
    ({"original": {...}, "pruned": {...}} of flat metric keys such as "passkey.accuracy", filled by `evaluate()`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, config: RankPruneConfig | None = None,
                 model_name: str | None = None, base_model: str | None = None,
                 recipe: Recipe | None = None):  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.config = config or (recipe.config if recipe is not None else RankPruneConfig())
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
        recipe: Recipe | None = None,
        **overrides: Any,
    ) -> RankPruner:
        """A pruner for a model object, a local folder or a Hub id (None: the embedded demo model); `overrides`
        replace fields of `config`. Without `config`: `default_config(model)`, i.e. `RankPruneConfig()` (64 calibration
        samples x 2048 tokens, the paper's scale) except for the embedded demo model, which gets its recipe's 16 x 512.
        `base_model`: the Hub id the card names as the base model (default: the model's id, also for a folder of the
        Hub cache). `recipe`: the recipe the run follows (its evaluation, output folder and push; see `from_recipe`)."""
        if isinstance(config, dict):
            config = RankPruneConfig.from_dict(config)
        check_base_model(base_model)
        if isinstance(model_or_path, torch.nn.Module):
            config = config or default_config(getattr(model_or_path.config, "_name_or_path", None))
            return cls(model_or_path, tokenizer, config.replace(**overrides) if overrides else config,
                       base_model=base_model, recipe=recipe)  # fmt: skip
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
        name = str(model_or_path) if model_or_path is not None else DEMO_MODEL_NAME
        pruner = cls(model, tokenizer or loaded_tokenizer, config, model_name=name, base_model=base_model,
                     recipe=recipe)  # fmt: skip
        pruner.source_model = path
        return pruner

    @classmethod
    def from_recipe(cls, recipe: Recipe | RankPruneConfig | dict | str | os.PathLike,
                    model: str | os.PathLike | torch.nn.Module | None = None, **overrides: Any) -> RankPruner:  # fmt: skip
        """A pruner set up by a recipe (YAML file, YAML string, mapping, `Recipe` or `RankPruneConfig`); `model` wins
        over the recipe's `model:` (None there: the embedded demo model). `overrides` win over the recipe: recipe
        fields (output_dir, evaluation, ...), RankPruneConfig fields (a budget field replaces the recipe's budget), or
        `device_map`, `torch_dtype`, `tokenizer`, `base_model`; the pruner keeps the recipe with them applied (the
        model card shows it). A model of another architecture raises `RecipeError` before any weight is read."""
        loading = {k: overrides.pop(k) for k in ("device_map", "torch_dtype", "tokenizer", "base_model")
                   if k in overrides}  # fmt: skip
        recipe = load_recipe(recipe)
        recipe = recipe.replace(**overrides) if overrides else recipe
        model = model if model is not None else recipe.model
        if isinstance(model, torch.nn.Module):
            check_architecture(recipe, model)
        else:
            check_architecture(recipe, load_config(resolve_model_path(model)))  # before any weight is read
        return cls.from_pretrained(model, recipe.config, recipe=recipe, **loading)

    # -- stages --------------------------------------------------------------------------------------------------
    def calibrate(self, data: Any = None, *, progress: bool = True) -> RankStats:
        """Run calibration; `data` overrides `config.data` (any spec `load_calibration_samples` takes, or samples)."""
        self._refuse_after_prune("calibrate")
        samples = self._samples(data, "Calibration data")
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
        `ImportanceScores`; `verbose` prints the passes it takes first. A score that needs data without a tokenizer
        (and no samples given) is refused before any work."""
        from .output_scores import importance_scores

        self._refuse_after_prune("measure_importance")
        if self.config.needs_rank_stats():
            raise PlanError(
                f"score={self.config.score!r} is computed from rank statistics (calibrate()); importance scores are "
                "kl, taylor, activation and decay."
            )
        samples = None
        if self.config.score in DATA_SCORES:
            samples = self._samples(data, f"score={self.config.score!r} is measured on calibration data, which")
        budget = greedy_budget(self.adapter, self.config) if self.config.score == "kl" and self.config.kl_greedy else None
        self._importance = importance_scores(self.model, self.config, samples, budget=budget, progress=progress,
                                             verbose=verbose, tokenizer=self.tokenizer)  # fmt: skip
        self._plan = None
        return self._importance

    def measure(self, data: Any = None, *, progress: bool = True, verbose: bool = True):
        """What `config.score` rests on: rank statistics (`calibrate`) for the rank scores, head-importance scores
        (`measure_importance`, no rank calibration) for the others. Returns them."""
        if self.config.needs_rank_stats():
            return self.calibrate(data, progress=progress)
        return self.measure_importance(data, progress=progress, verbose=verbose)

    @property
    def is_measured(self) -> bool:
        """What the score rests on is there (calibrated or loaded statistics, or measured importance scores)."""
        return (self._stats if self.config.needs_rank_stats() else self._importance) is not None

    def plan(self) -> PrunePlan:
        """The heads to remove under the config, from what `measure()` gives (run first if needed)."""
        if self._plan is None:
            if self._pruned:
                raise PlanError("This pruner already pruned its model; create a new RankPruner to prune it again.")
            if not self.is_measured:
                self.measure()
            if self.config.needs_rank_stats():
                self._plan = plan_from_stats(self.adapter, self._stats, self.config)
            else:
                measured = dict(self._importance.measured)
                measured["calibration_samples"] = measured.get("samples")
                measured["calibration_seq_len"] = measured.get("seq_len")
                self._plan = plan_from_scores(self.adapter, self._importance.scores, self.config, measured)
            self._plan.settings[ORIGINAL_MODEL_KEY] = self.original_model
        return self._plan

    @property
    def original_model(self) -> str | None:
        """How the plan names the model it is cut from (recovery's default teacher): its Hub id, the demo model's
        marker, or its local folder; None for a model given as an object with no known origin."""
        from .card import hub_model_id

        source = self.source_model or getattr(self.model.config, "_name_or_path", None) or None
        if is_demo_model(source):
            return DEMO_ORIGINAL
        hub_id = self.base_model or hub_model_id(str(self.model_name)) or hub_model_id(source)
        if hub_id is not None:
            return hub_id
        return str(Path(source).expanduser().resolve()) if source and Path(source).expanduser().is_dir() else None

    @property
    def pruning_plan(self) -> PrunePlan | None:
        """After `prune()`, the plan relative to the original model (composed over earlier prunings); before, the
        plan chosen for this model (None until planned)."""
        return model_plan(self.model) if self._pruned else self._plan

    def prune(self, *, carry: Sequence[dict[str, torch.Tensor]] = ()) -> torch.nn.Module:
        """Measure (if needed), plan (if needed) and physically remove the chosen heads; returns the model.
        `carry`: tensors shaped like parameters (an optimizer's moments) sliced along, see `apply_plan`."""
        if not self._pruned:
            apply_plan(self.model, self.plan(), carry=carry)
            self._pruned = True
        return self.model

    def evaluate(self, tasks: Sequence[str] | None = None, *, progress: bool = True, **settings: Any) -> dict:
        """Evaluate the model as it is now with `evaluation.evaluate_model`: the original before `prune()`, the
        pruned model after. The results are kept in `evaluation_results` under "original" or "pruned" (the model
        card shows them) and returned. `tasks` and `settings` (evaluate_model's keyword arguments) default to the
        recipe's `evaluation:`, then to evaluate_model's defaults."""
        from .evaluation import evaluate_model

        recipe_settings = dict(self.recipe.evaluation or {}) if self.recipe is not None else {}
        recipe_tasks = recipe_settings.pop("tasks", None)
        settings = {**recipe_settings, **settings}
        tasks = tasks if tasks is not None else recipe_tasks
        if tasks is not None:
            settings["tasks"] = list(tasks)
        side = "pruned" if self._pruned else "original"
        results = evaluate_model(self.model, self.tokenizer, progress=progress, **settings)
        self.evaluation_results = {**(self.evaluation_results or {}), side: results}
        return results

    def run(self, output_dir: str | os.PathLike | None = None, *, overwrite: bool = False,
            progress: bool = True) -> RunResult:  # fmt: skip
        """The whole pipeline, as every entry point runs it: measure (unless statistics or scores are already
        there), plan, evaluate the original model, prune, evaluate the pruned model, save into `output_dir`, push.
        The recipe (if any) says what to evaluate (`evaluation:`), the default `output_dir` (`output_dir:`) and
        where to push (`push_to_hub:`, the saved folder, or a temporary one without an output folder). The
        output folder and the repo id are checked before any work."""
        from .hub import _check_repo_id, push_folder
        from .utils import check_output_dir

        recipe = self.recipe or Recipe(config=self.config)
        output_dir = output_dir if output_dir is not None else recipe.output_dir
        if output_dir is not None:
            check_output_dir(output_dir, overwrite, (self.source_model,))
        if recipe.push_to_hub:
            _check_repo_id(recipe.push_to_hub["repo_id"])
        if not self.is_measured:
            self.measure(progress=progress)
        self.plan()  # before any evaluation: a budget the model cannot meet fails early
        if recipe.evaluation:
            self._evaluate_stage(progress)
        self.prune()
        if recipe.evaluation:
            self._evaluate_stage(progress)
        folder = self.save_pretrained(output_dir, overwrite=overwrite) if output_dir is not None else None
        commit = None
        if recipe.push_to_hub and folder is not None:
            commit = push_folder(folder, **recipe.push_to_hub)
        elif recipe.push_to_hub:
            commit = self.push_to_hub(**recipe.push_to_hub)
        return RunResult(self.pruning_plan, folder, self.evaluation_results, commit)

    def _evaluate_stage(self, progress: bool) -> None:
        """`evaluate()` with the recipe's settings, saying first which model it evaluates (a long phase)."""
        if progress:
            tasks = self.recipe.evaluation.get("tasks") or ["every task"]
            print(f"Evaluating the {'pruned' if self._pruned else 'original'} model ({', '.join(tasks)})", flush=True)
        self.evaluate(progress=progress)

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

    def _samples(self, data: Any, what: str):
        """Calibration samples: `data` if it is samples, else `data` (default `config.data`) loaded and tokenised."""
        if hasattr(data, "input_ids"):
            return data
        from .data import load_calibration_samples

        if self.tokenizer is None:
            raise CalibrationDataError(
                f"{what} needs a tokenizer: pass tokenizer= to RankPruner.from_pretrained (or samples as data)."
            )
        spec = data if data is not None else self.config.data
        return load_calibration_samples(spec, self.tokenizer, self.config.num_samples, self.config.seq_len,
                                        self.config.seed)  # fmt: skip

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
