"""Pruning inside training: `apply_recipe` prunes a model in place and `RankPruneCallback` does it at a step of a
`transformers.Trainer` run; the optimizer follows the pruning, keeping the state (Adam moments, step count) of the
kept heads (`parameter_shaped_state`, `retarget_optimizer`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .config import RankPruneConfig
from .data import CalibrationSamples
from .errors import RecipeError
from .plan import PrunePlan
from .pruner import RankPruner
from .recipe import Recipe, load_recipe
from .utils import shown

logger = logging.getLogger(__name__)


def _samples(data: Any):
    """Token-id tensors [N, T] become calibration samples; everything else goes to the pruner as is."""
    if isinstance(data, torch.Tensor):
        ids = data if data.dim() == 2 else data.reshape(1, -1)
        return CalibrationSamples(ids.detach().to("cpu", torch.long), ["train"] * ids.shape[0])
    return data


def apply_recipe(model: torch.nn.Module, recipe: Recipe | RankPruneConfig | dict | str | os.PathLike,
                 tokenizer: Any = None, data: Any = None, optimizer: Any = None) -> PrunePlan:  # fmt: skip
    """Calibrate `model` (eval mode, no grad), plan and prune it in place under `recipe`; returns the plan relative
    to the original model. `data`: calibration samples, a [N, T] tensor of token ids, or any spec
    `load_calibration_samples` takes (default: the recipe's calibration data, tokenised with `tokenizer`).
    `optimizer` (over `model`'s parameters) follows the pruning: see `retarget_optimizer`."""
    pruner = RankPruner.from_recipe(recipe, model, tokenizer=tokenizer)
    names_before = {id(p): n for n, p in model.named_parameters()}
    state = parameter_shaped_state(optimizer, model) if optimizer is not None else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pruner.measure(_samples(data), progress=False, verbose=False)
            pruner.prune(carry=list(state.values()))
    finally:
        model.train(was_training)
    if optimizer is not None:
        retarget_optimizer(optimizer, model, names_before, state)
    return pruner.pruning_plan


def parameter_shaped_state(optimizer: Any, model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{state key: {parameter name: tensor}} for the optimizer state shaped like its parameter (Adam's `exp_avg`,
    `exp_avg_sq`, ...): what `apply_plan(carry=...)` slices along with the weights."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in model.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == param.shape:
                state.setdefault(key, {})[name] = value
    return state


def retarget_optimizer(optimizer: Any, model: torch.nn.Module, names_before: dict[int, str],
                       carried: dict[str, dict[str, torch.Tensor]] | None = None) -> int:  # fmt: skip
    """After pruning replaced parameters, point `optimizer`'s param groups at the model's new parameters (same
    names, new tensors) in place, so the Trainer's optimizer and LR scheduler keep working. Returns how many
    parameters were replaced.

    `carried`: `parameter_shaped_state` taken before pruning and sliced by `apply_plan(carry=...)`. A replaced
    parameter then keeps the state of its kept heads (moments and step count) instead of restarting from zero, so
    training goes on where it was rather than with a fresh warm-up of the optimizer statistics.
    """
    carried = carried or {}
    now = dict(model.named_parameters())
    placed: set[int] = set()
    scalars: dict[str, dict[str, Any]] = {}  # the replaced parameters' other state (e.g. `step`) by name
    replaced = 0
    for group in optimizer.param_groups:
        params = []
        for param in group["params"]:
            name = names_before.get(id(param))
            new = param if name is None else now.get(name)
            if new is not param:
                old_state = optimizer.state.pop(param, {})
                scalars[name] = {
                    k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in old_state.items() if k not in carried
                }
                replaced += 1
            if new is not None and id(new) not in placed:
                params.append(new)
                placed.add(id(new))
        group["params"] = params
    known = set(names_before.values())
    missing = [p for n, p in now.items() if p.requires_grad and id(p) not in placed and n not in known]
    if missing and optimizer.param_groups:
        optimizer.param_groups[0]["params"].extend(missing)
    before = set(names_before)
    for name, param in now.items():
        if id(param) in before or param in optimizer.state or not carried:
            continue
        values = {key: tensors.get(name) for key, tensors in carried.items()}
        if all(value is not None and value.shape == param.shape for value in values.values()):
            # a renamed parameter (e.g. in_proj_qkvz -> in_proj_qkv) takes the step count of its own layer's
            nearest = max(scalars, key=lambda old: len(os.path.commonprefix([old, name])), default=None)
            optimizer.state[param] = {**scalars.get(nearest, {}), **values}
    return replaced


try:  # transformers is a dependency; the callback class is defined only where its base class imports
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object  # type: ignore[assignment,misc]


class RankPruneCallback(TrainerCallback):
    """Prune during training with `transformers.Trainer`: after optimizer step `start_step` (0: before the first
    step) the model is calibrated (eval mode, no grad), pruned in place, and the Trainer's optimizer is pointed at
    the new parameters, keeping the state (Adam moments, step) of the kept heads; training then continues on the
    pruned model (recovery fine-tuning).

    Args:
        recipe_or_config: a Recipe (or its file / YAML / mapping) or a RankPruneConfig.
        tokenizer: tokenises the recipe's calibration data (default: the Trainer's `processing_class`).
        data: calibration data (samples, a [N, T] tensor of token ids, or data specs); default: the recipe's.
        start_step: optimizer step after which to prune; default: the recipe's `start_step`.

    Single-process training only (a DDP/FSDP wrapper holds its own references to the parameters).
    """

    def __init__(self, recipe_or_config: Any, tokenizer: Any = None, data: Any = None, start_step: int | None = None):
        self.recipe = load_recipe(recipe_or_config)
        step = start_step if start_step is not None else self.recipe.start_step
        if step is None:
            raise RecipeError(
                f"{self.recipe.label}: RankPruneCallback needs start_step (pass start_step= or "
                f"set {self.recipe.modifier_path}.start_step)."
            )
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise RecipeError(f"start_step={shown(step)} is not allowed: it must be an integer >= 0.")
        self.start_step = step
        self.tokenizer = tokenizer
        self.data = data
        self.plan = None
        self.pruned_at_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.start_step == 0 and state.global_step == 0:
            self._prune(state, kwargs)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.plan is None and state.global_step == self.start_step:
            self._prune(state, kwargs)
        return control

    def _prune(self, state, kwargs: dict) -> None:
        model = kwargs["model"]
        optimizer = kwargs.get("optimizer")
        tokenizer = self.tokenizer if self.tokenizer is not None else kwargs.get("processing_class")
        self.plan = apply_recipe(model, self.recipe, tokenizer=tokenizer, data=self.data, optimizer=optimizer)
        self.pruned_at_step = state.global_step
        logger.info(
            "RankPruneCallback: removed %s of %s value heads after step %s; the optimizer follows the kept heads.",
            self.plan.settings.get("removed_value_heads"), self.plan.settings.get("total_value_heads"),
            state.global_step,
        )  # fmt: skip
