"""Family-agnostic entry points of head removal and persistence of pruned models.

`apply_plan(model, plan)` removes heads through the model's adapter (hf_rankprune/arch/); `save_pruned` writes a
pruned model so that `from_pretrained` loads it: stock transformers for uniform plans, `import hf_rankprune` (registered
`*_rankpruned` model types) or `trust_remote_code=True` (code copied into the folder) for ragged plans.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch.base import check_can_carry_ragged, get_adapter
from .checkpoint import auto_class_for_config, check_saved_checkpoint
from .plan import PlanError, PrunePlan
from .utils import atomic_output_dir, check_output_dir

PLAN_FILE = "prune_plan.json"


def apply_plan(model: nn.Module, plan: PrunePlan, carry: Sequence[dict[str, torch.Tensor]] = ()) -> nn.Module:
    """Physically remove the heads `plan` drops from `model`, in place, and return the model (as transformers' and
    peft's model transforms do: `model = apply_plan(model, plan)`). `plan` indexes the heads of `model` as it is now;
    the plan relative to the original model is stored in `model.config.rankprune_plan` (read it with
    `model_plan(model)`). `carry`: {parameter name: tensor of its shape} mappings (e.g. optimizer moments), sliced in
    place like the weights."""
    get_adapter(model).apply_plan(plan, carry)
    return model


def model_plan(model_or_config) -> PrunePlan | None:
    """The plan recorded in a pruned model (or its config), relative to the original model; None if unpruned."""
    config = getattr(model_or_config, "config", model_or_config)
    return PrunePlan.from_config(config)


def save_pruned(
    model: nn.Module,
    save_directory: str | os.PathLike,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
    max_shard_size: int | str | None = None,
    write_extra: Callable[[Path], None] | None = None,
    source_model: str | os.PathLike | None = None,
    **save_kwargs: Any,
) -> Path:
    """Write a pruned model (safetensors), its tokenizer if given, `prune_plan.json` and the plan in config.json.

    The folder is written beside `save_directory` under a temporary name and renamed at the end, so an interruption
    never leaves a half-written folder. An existing non-empty folder is refused unless `overwrite`. Ragged plans also
    get `auto_map` and self-contained code, so `trust_remote_code=True` loads them without hf_rankprune.
    `write_extra(folder)` may add files (a model card, figures) before the folder appears. `source_model` (the
    original's folder or Hub id): its processor files (image/video preprocessor configs, chat template) travel along,
    so a vision-language model stays usable with `AutoProcessor`.
    """
    from .modeling import remote_code_files

    plan = model_plan(model)
    if plan is None:
        raise PlanError("the model carries no prune plan (config.rankprune_plan): prune it before save_pruned.")
    inputs = (getattr(model, "name_or_path", None), source_model)  # the output may not overlap what was read
    check_output_dir(save_directory, overwrite, inputs)
    ragged = not plan.is_uniform
    if ragged:
        check_can_carry_ragged(model)
    if max_shard_size is not None:
        save_kwargs["max_shard_size"] = max_shard_size
    with atomic_output_dir(save_directory, overwrite, inputs) as staging:
        model.save_pretrained(staging, safe_serialization=True, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        plan.to_json_file(staging / PLAN_FILE)
        if source_model is not None:
            copy_processor_files(source_model, staging)
        if ragged:
            config_class = type(model.config)
            for name, source in remote_code_files().items():
                shutil.copyfile(source, staging / name)
            config_path = staging / "config.json"
            values = json.loads(config_path.read_text(encoding="utf-8"))
            values["auto_map"] = {
                "AutoConfig": f"configuration_rankpruned.{config_class.__name__}",
                auto_class_for_config(model.config).__name__: f"modeling_rankpruned.{type(model).__name__}",
            }
            config_path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        check_saved_checkpoint(staging)
        if write_extra is not None:
            write_extra(staging)
    target = Path(save_directory).absolute()
    return target


PROCESSOR_FILES = (
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)


def copy_processor_files(source_model: str | os.PathLike, folder: Path) -> None:
    """Copy the processor files of `source_model` (folder or Hub id) that `folder` does not have yet."""
    from transformers.utils import cached_file

    for name in PROCESSOR_FILES:
        if (folder / name).exists():
            continue
        found = cached_file(
            str(source_model),
            name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        if found is not None:
            shutil.copyfile(found, folder / name)
