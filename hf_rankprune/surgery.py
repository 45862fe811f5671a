"""The surgery engine: physical head removal for every family, and persistence of pruned models.

`apply_plan(model, plan)` is the one place layers are rebuilt. The family's adapter (hf_rankprune/arch/) supplies what
differs: the canonical weights of a layer and the axis of each that holds a head (`head_axes`, so `select_heads`
slices every family alike), the stock and ragged layer classes and their state dicts, and the config keys a uniform
plan edits. `save_pruned` writes a pruned model so that `from_pretrained` loads it: stock transformers for uniform
plans, `import hf_rankprune` (registered `*_rankpruned` model types) or `trust_remote_code=True` (code written into
the folder) for ragged plans.
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

from .arch import LinearAttentionAdapter, get_adapter
from .arch.base import select_heads
from .arch.registry import RAGGED_CLASSES, ragged_class_of, stock_class_of
from .checkpoint import auto_class_for_config, check_saved_checkpoint
from .errors import AdapterError
from .integrations.accelerate_hooks import carry_hooks, materialised_tensors
from .modeling import LAYER_OPTIONS_KEY
from .plan import CONFIG_KEY, PlanError, PrunePlan
from .utils import atomic_output_dir, check_output_dir

PLAN_FILE = "prune_plan.json"


def apply_plan(model: nn.Module, plan: PrunePlan, carry: Sequence[dict[str, torch.Tensor]] = ()) -> nn.Module:
    """Physically remove the heads `plan` drops from `model`, in place, and return the model (as transformers' and
    peft's model transforms do: `model = apply_plan(model, plan)`). `plan` indexes the heads of `model` as it is now;
    the plan relative to the original model is stored in `model.config.rankprune_plan` (read it with
    `model_plan(model)`).

    A plan whose composition with earlier pruning is uniform (and stock-expressible, `PrunePlan.loads_in_stock`) keeps
    the stock module classes and edits the config's head counts (the adapter's `head_count_keys`); otherwise pruned
    layers become the family's ragged layer class,
    with their own head counts and value->key map, and the model/config classes become the registered
    `*_rankpruned` ones. Accelerate hooks are carried over to rebuilt modules.

    `carry`: {parameter name: tensor of its shape} mappings (e.g. an optimizer's Adam moments), sliced in place like
    the weights, so their entries for a rebuilt layer end up under the new parameters' names and shapes. A layer
    with a parameter missing from a mapping loses its entries in that mapping.
    """
    adapter = get_adapter(model)
    plan.validate_for(adapter.geometry())
    adapter.check_plan(plan)
    previous = PrunePlan.from_config(adapter.config)
    total = previous.compose(plan) if previous is not None else plan
    uniform = total.loads_in_stock
    if not uniform:
        check_can_carry_ragged(model)
    infos = {info.index: info for info in adapter.linear_layers()}
    module_names = {id(module): name for name, module in model.named_modules()}
    ragged_class = adapter.ragged_layer_class()
    # uniform: the stock config describes every layer; ragged: it keeps the original counts (unpruned layers)
    first = total.layers[0]
    if uniform:
        adapter.set_head_counts(first.num_kept_value_heads, first.num_kept_key_heads)
    else:
        adapter.set_head_counts(first.num_value_heads, first.num_key_heads)
        setattr(adapter.config, LAYER_OPTIONS_KEY, adapter.ragged_layer_options())
    for layer_plan in plan.layers:
        info = infos[layer_plan.layer]
        target_ragged = not uniform and total.layer(layer_plan.layer).is_pruned
        if not layer_plan.is_pruned and isinstance(info.module, ragged_class) == target_ragged:
            continue
        old = info.module
        weights, state = _rebuilt_state(adapter, old, materialised_tensors(old), layer_plan, target_ragged)
        with torch.device("meta"):
            if target_ragged:
                new = adapter.build_ragged_layer(
                    layer_plan.layer, len(layer_plan.kept_key_heads), len(layer_plan.kept_value_heads),
                    layer_plan.value_to_key,
                )  # fmt: skip
            else:
                new = adapter.build_stock_layer(layer_plan.layer)
        for tensors in carry:
            _carry_layer(adapter, old, new, module_names[id(old)], layer_plan, target_ragged, tensors)
        _load_tensors(new, state, old)
        new.train(old.training)
        _replace_module(model, old, new)
    if uniform and hasattr(adapter.config, LAYER_OPTIONS_KEY):
        delattr(adapter.config, LAYER_OPTIONS_KEY)
    setattr(adapter.config, CONFIG_KEY, total.to_dict())
    _swap_model_classes(model, ragged=not uniform)
    return model


def _rebuilt_state(adapter: LinearAttentionAdapter, module: nn.Module, tensors, layer_plan, target_ragged: bool):
    """(canonical weights of the kept heads, state dict of the rebuilt layer) from `module`'s tensors by name."""
    weights = select_heads(adapter.canonical_weights(module, tensors), adapter.head_axes, layer_plan)
    return weights, adapter.ragged_state(weights) if target_ragged else adapter.stock_state(weights)


def _carry_layer(adapter, old: nn.Module, new: nn.Module, prefix: str, layer_plan, target_ragged: bool,
                 tensors: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Slice `tensors`' entries for `old`'s parameters like its weights, re-keyed to `new`'s parameters."""
    names = [name for name, _ in old.named_parameters()]
    carried = {name: tensors.pop(f"{prefix}.{name}", None) for name in names}
    if any(value is None for value in carried.values()):
        return
    _, state = _rebuilt_state(adapter, old, {**dict(old.named_buffers()), **carried}, layer_plan, target_ragged)
    for name, _ in new.named_parameters():
        tensors[f"{prefix}.{name}"] = state[name].contiguous()


def _load_tensors(new: nn.Module, state: dict[str, torch.Tensor], old: nn.Module) -> None:
    """Put `state` into `new` (built on meta) as real tensors; each keeps the dtype of the weights it was cut from
    (families keep `A_log`, `dt_bias` or conv weights in fp32 beside bf16 projections). Then carry `old`'s
    accelerate hooks over (offloading hooks re-capture the new weights)."""
    requires_grad = next(iter(old.parameters())).requires_grad
    names = {name for name, _ in new.named_parameters()} | {name for name, _ in new.named_buffers()}
    missing, unexpected = names - set(state), set(state) - names
    if missing or unexpected:
        raise AdapterError(f"internal error: rebuilt layer state mismatch (missing {missing}, unexpected {unexpected}).")
    for name, value in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = new.get_submodule(owner_name) if owner_name else new
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(value.contiguous(), requires_grad=requires_grad)
        else:
            owner._buffers[attr] = value.contiguous()
    carry_hooks(old, new)


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise AdapterError("internal error: layer module not found in the model.")


def check_can_carry_ragged(model: nn.Module) -> None:
    """Refuse (before any change) a model whose class has no registered ragged-pruned counterpart."""
    if ragged_class_of(model) is None:
        raise PlanError(
            f"{type(model).__name__} cannot carry a ragged (per-layer) plan: ragged pruned models exist for "
            f"{sorted(cls.__name__ for cls in RAGGED_CLASSES)}. Use budget='uniform' (--budget uniform) for this "
            "model, or load it with one of those classes."
        )


def _swap_model_classes(model: nn.Module, ragged: bool) -> None:
    """Ragged results use the registered `*_rankpruned` config/model classes (own model_type); uniform ones the
    stock classes."""
    target = ragged_class_of(model) if ragged else stock_class_of(model)
    if target is not None and type(model) is not target:
        model.config.__class__ = target.config_class
        if "model_type" in vars(model.config):  # some configs keep the type read from config.json on the instance
            model.config.model_type = target.config_class.model_type
        model.__class__ = target


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
    from .modeling import write_remote_code

    plan = model_plan(model)
    if plan is None:
        raise PlanError("the model carries no prune plan (config.rankprune_plan): prune it before save_pruned.")
    inputs = (getattr(model, "name_or_path", None), source_model)  # the output may not overlap what was read
    check_output_dir(save_directory, overwrite, inputs)
    ragged = not plan.loads_in_stock
    if ragged:
        check_can_carry_ragged(model)
    if max_shard_size is not None:
        save_kwargs["max_shard_size"] = max_shard_size
    with atomic_output_dir(save_directory, overwrite, inputs) as staging:
        get_adapter(model).prepare_save()
        model.save_pretrained(staging, safe_serialization=True, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        plan.to_json_file(staging / PLAN_FILE)
        if source_model is not None:
            copy_processor_files(source_model, staging)
        if ragged:
            auto_map = write_remote_code(staging, type(model))
            config_path = staging / "config.json"
            values = json.loads(config_path.read_text(encoding="utf-8"))
            values["auto_map"] = {
                "AutoConfig": auto_map["AutoConfig"],
                auto_class_for_config(model.config).__name__: auto_map["model"],
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
