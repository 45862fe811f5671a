"""Recipes: one YAML file that drives a whole run (model, calibration, pruning settings, evaluation, output).

The grammar follows llm-compressor's recipes (a stage holding a group of modifiers, each modifier with its keyword
arguments), plus top-level keys for what a run needs besides the modifier:

    description: Paper setting (JRNP, 448 of 1152 heads)   # optional free text
    model: Qwen/Qwen3-Next-80B-A3B-Instruct                 # Hub id or local folder; null = the embedded demo model
    architecture: [qwen3_next]                              # model_type(s) the recipe is for; null = any supported
    calibration:                                            # RankPruneConfig's fields of recipe=CALIBRATION
      data: [builtin]                                       # specs as `load_calibration_samples` takes; null = builtin
      num_samples: 64
      seq_len: 2048
      batch_size: 1
      grid_step: 64                                         # (or grid: [explicit token positions])
      seed: 0
    pruning_stage:                                          # exactly one `<name>_stage` with this modifier
      pruning_modifiers:                                    # exactly one `<name>_modifiers`
        RankPruningModifier:                                # RankPruneConfig's fields of recipe=MODIFIER
          rank_eps: 1.0e-4
          norm: nuclear
          rank_metric: threshold
          time_aggregation: mean
          score: joint
          alpha: 0.5
          direction: saturated
          num_heads: 448                                    # exactly one of ratio / num_heads / target_state_bytes
          budget: global
          min_heads_per_layer: 1
          protected_layers: []
          start_step: 100                                   # training callbacks only: prune after this step
    recovery_stage:                                         # optional: `hf-rankprune recover --recipe` runs it
      recovery_modifiers:
        DistillationModifier:                               # hf_rankprune.recovery.RecoveryConfig's fields
          steps: 300
          learning_rate: 1.0e-5
          method: full                                      # or lora (peft adapters, merged at the end)
    evaluation:                                             # optional; arguments of evaluation.evaluate_model
      tasks: [perplexity, passkey, memory]
    output_dir: out/qwen3-next-80b-rp39                     # optional
    push_to_hub: {repo_id: me/Qwen3-Next-80B-A3B-Instruct-rp39, private: true}   # optional

The keys of both sections are RankPruneConfig's fields, each in the section its `config.setting(recipe=...)`
declares. Files are read with a `yaml.SafeLoader` that also reads exponents without a decimal point (`1e-4`) as
numbers, as YAML 1.2 does (PyYAML's YAML 1.1 rules read them as strings). Every problem raises `RecipeError` (a
ValueError) whose message names the file and the key path, e.g. ``recipes/x.yaml:
pruning_stage.pruning_modifiers.RankPruningModifier.ratio=1.5 is not allowed: it must lie in (0.0, 1.0).``

Running a recipe is `RankPruner.from_recipe(recipe).run()` (pruner.py); pruning inside training is training.py.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import CALIBRATION, MODIFIER, ConfigError, RankPruneConfig, settings_in
from .errors import RecipeError  # noqa: F401 (re-exported)
from .recovery import RECOVERY_SETTINGS, RecoveryConfig
from .utils import shown

MODIFIER_NAME = "RankPruningModifier"
RECOVERY_MODIFIER_NAME = "DistillationModifier"
CALIBRATION_FIELDS = tuple(spec.name for spec in settings_in(recipe=CALIBRATION))
MODIFIER_FIELDS = tuple(spec.name for spec in settings_in(recipe=MODIFIER))
MODIFIER_EXTRA_FIELDS = ("start_step",)
TOP_LEVEL_FIELDS = ("description", "model", "architecture", "calibration", "evaluation", "output_dir", "push_to_hub")
PUSH_FIELDS = ("repo_id", "private")
RECOVERY_STAGE, RECOVERY_GROUP = "recovery_stage", "recovery_modifiers"  # how `to_dict` writes the recovery stage
_STRING_SOURCE = "<recipe>"


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes; more is a mistake (or an attack)
MAX_RECIPE_NODES = 10_000  # values a recipe may hold once its aliases are expanded (refused before construction)


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that resolves `1e-4` to a float (YAML 1.2), so `rank_eps: 1e-4` means what its writer meant, and
    that refuses documents whose aliases expand beyond MAX_RECIPE_NODES values ("billion laughs") or refer to
    themselves, before anything is constructed."""

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


class _ExpansionError(yaml.YAMLError):
    pass


def _check_expansion(root: yaml.Node) -> None:
    """Count the values `root` expands to (each alias counted as often as it is used), stopping at the limit."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _ExpansionError("an anchor refers to itself (a recursive alias): recipes cannot be recursive")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_RECIPE_NODES:
                raise _ExpansionError(
                    f"it expands to more than {MAX_RECIPE_NODES} values (aliases of anchors nest too deep): write the "
                    "values out instead of nesting aliases"
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)



@dataclass
class Recipe:
    """A parsed, validated recipe. `config` holds every calibration/metric/scoring/budget setting."""

    config: RankPruneConfig = field(default_factory=RankPruneConfig)
    model: str | None = None
    architecture: list[str] | None = None
    evaluation: dict[str, Any] | None = None
    output_dir: str | None = None
    push_to_hub: dict[str, Any] | None = None
    start_step: int | None = None
    description: str | None = None
    stage: str = "pruning_stage"
    modifiers_group: str = "pruning_modifiers"
    source: str | None = field(default=None, compare=False)
    recovery: RecoveryConfig | None = None  # the recovery stage's settings (None: the recipe has none)

    @property
    def modifier_path(self) -> str:
        return f"{self.stage}.{self.modifiers_group}.{MODIFIER_NAME}"

    @property
    def label(self) -> str:
        """How messages name the recipe: its file, or '<recipe>' for one given as text or data."""
        return self.source or _STRING_SOURCE

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, in the YAML grammar (`load_recipe(recipe.to_dict()) == recipe`). Settings that
        are unset (None: the budgets not in force, no grid, default data) or switches that are off are left out."""
        calibration = _section(self.config, CALIBRATION)
        modifier = _section(self.config, MODIFIER)
        if self.start_step is not None:
            modifier["start_step"] = self.start_step
        out: dict[str, Any] = {}
        if self.description is not None:
            out["description"] = self.description
        out["model"] = self.model
        out["architecture"] = list(self.architecture) if self.architecture is not None else None
        out["calibration"] = calibration
        out[self.stage] = {self.modifiers_group: {MODIFIER_NAME: modifier}}
        if self.recovery is not None:
            defaults = RecoveryConfig().to_dict()
            changed = {k: v for k, v in self.recovery.to_dict().items() if v != defaults[k]}
            out[RECOVERY_STAGE] = {RECOVERY_GROUP: {RECOVERY_MODIFIER_NAME: changed}}
        if self.evaluation is not None:
            out["evaluation"] = copy.deepcopy(self.evaluation)
        if self.output_dir is not None:
            out["output_dir"] = self.output_dir
        if self.push_to_hub is not None:
            out["push_to_hub"] = dict(self.push_to_hub)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with recipe fields and/or config fields replaced (config fields are validated; setting one
        budget field clears the other two, see `RankPruneConfig.replace`)."""
        recipe_fields = {f.name for f in dataclasses.fields(self)} - {"config"}
        own = {k: v for k, v in overrides.items() if k in recipe_fields}
        settings = {k: v for k, v in overrides.items() if k not in recipe_fields}
        config = self.config.replace(**settings) if settings else self.config
        return dataclasses.replace(self, config=config, **own)


def _section(config: RankPruneConfig, section: str) -> dict[str, Any]:
    """The settings of one recipe section as the recipe writes them."""
    values = {}
    for spec in settings_in(recipe=section):
        value = getattr(config, spec.name)
        if value is not None and not (value is False and spec.default is False):
            values[spec.name] = copy.deepcopy(value)
    return values


# ---------------------------------------------------------------------------------------------------------------
# loading and validation
# ---------------------------------------------------------------------------------------------------------------
def load_recipe(recipe: Recipe | RankPruneConfig | dict | str | os.PathLike) -> Recipe:
    """A `Recipe` from a YAML file path, a YAML string, a mapping, a RankPruneConfig (a recipe of just those
    settings), or a Recipe (returned as is)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, RankPruneConfig):
        return Recipe(config=recipe)
    if isinstance(recipe, dict):
        return _parse(recipe, _STRING_SOURCE)
    if isinstance(recipe, (str, os.PathLike)):
        text, source = _read(recipe)
        try:
            data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader)
        except _ExpansionError as error:
            raise RecipeError(f"{source}: refused: {error}.") from None
        except yaml.YAMLError as error:
            detail = shown(" ".join(str(error).split()), 400)
            raise RecipeError(f"{source}: not valid YAML: {detail}") from None
        except RecursionError:
            raise RecipeError(f"{source}: refused: values nest too deep for a recipe.") from None
        if data is None:
            raise RecipeError(f"{source}: the recipe is empty.")
        return _parse(data, source)
    raise RecipeError(f"A recipe is a YAML file path, a YAML string or a mapping, not {type(recipe).__name__}.")


def _read(recipe: str | os.PathLike) -> tuple[str, str]:
    text = os.fspath(recipe)
    looks_like_path = isinstance(recipe, os.PathLike) or ("\n" not in text and (
        text.endswith((".yaml", ".yml")) or Path(text).expanduser().is_file()))  # fmt: skip
    too_big = f"the recipe is larger than {MAX_RECIPE_BYTES} bytes; a recipe is a short YAML file"
    if not looks_like_path:
        if len(text) > MAX_RECIPE_BYTES:
            raise RecipeError(f"{_STRING_SOURCE}: {too_big}.")
        return text, _STRING_SOURCE
    path = Path(text).expanduser()
    if path.is_dir():
        raise RecipeError(f"{text}: is a folder: give the recipe's YAML file.")
    if not path.is_file():
        raise RecipeError(f"{text}: no such recipe file.")
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{text}: {too_big}.")
        return path.read_text(encoding="utf-8"), text
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"{text}: cannot read the recipe: {shown(str(error), 200)}") from error


def _key(key: str, limit: int = 60) -> str:
    """A key of the recipe as written, cut short if it is long (for messages)."""
    return key if len(key) <= limit else key[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(value: Any, where: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: {where} must be a mapping, got {_type_name(value)} {shown(value)}.")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise RecipeError(f"{source}: {where} has non-string keys {shown(bad)}.")
    return value


def _unknown(values: dict, allowed: tuple[str, ...], where: str, source: str, hint: str = "") -> None:
    unknown = [k for k in values if k not in allowed]
    if unknown:
        prefix = f"{where}." if where else ""
        raise RecipeError(
            f"{source}: unknown key {prefix}{_key(unknown[0])}; allowed {'here ' if where else 'at the top level '}are "
            f"{list(allowed)}.{hint}"
        )


def _optional_str(values: dict, key: str, where: str, source: str) -> str | None:
    value = values.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise RecipeError(f"{source}: {where}{key}={shown(value)} is not allowed: give a non-empty string or null.")
    return value


def _is_recovery_stage(value: Any) -> bool:
    """A stage whose one modifiers group holds the DistillationModifier."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    group = next(iter(value.values()))
    return isinstance(group, dict) and RECOVERY_MODIFIER_NAME in group


def _recovery(data: dict, stage: str, source: str) -> RecoveryConfig:
    group = next(iter(data[stage]))
    modifiers = data[stage][group]
    path = f"{stage}.{group}"
    extra = [m for m in modifiers if m != RECOVERY_MODIFIER_NAME]
    if extra:
        raise RecipeError(f"{source}: unknown modifier {path}.{_key(extra[0])}; a recovery stage runs exactly one "
                          f"{RECOVERY_MODIFIER_NAME}.")  # fmt: skip
    path = f"{path}.{RECOVERY_MODIFIER_NAME}"
    kwargs = modifiers[RECOVERY_MODIFIER_NAME]
    kwargs = {} if kwargs is None else _mapping(kwargs, path, source)
    _unknown(kwargs, tuple(spec.name for spec in RECOVERY_SETTINGS), path, source)
    try:
        return RecoveryConfig.from_dict(kwargs)
    except ConfigError as error:
        raise RecipeError(f"{source}: {path}.{error}") from error


def _parse(data: Any, source: str) -> Recipe:
    data = _mapping(data, "the recipe", source)
    stages = [k for k in data if k.endswith("_stage") or k == "stage"]
    recovery_stages = [k for k in stages if _is_recovery_stage(data[k])]
    if len(recovery_stages) > 1:
        raise RecipeError(f"{source}: a recipe has at most one recovery stage; found {shown(recovery_stages)}.")
    stages = [k for k in stages if k not in recovery_stages]
    others = {k: v for k, v in data.items() if k not in stages and k not in recovery_stages}
    _unknown(others, TOP_LEVEL_FIELDS, "", source, " A stage is a key ending in '_stage'.")
    if len(stages) != 1:
        raise RecipeError(
            f"{source}: a recipe needs exactly one '<name>_stage' holding one '<name>_modifiers' group with a "
            f"{MODIFIER_NAME}; found {len(stages)} stages {shown(stages)}."
        )
    stage = stages[0]
    groups = _mapping(data[stage], stage, source)
    if len(groups) != 1 or not next(iter(groups)).endswith("modifiers"):
        raise RecipeError(
            f"{source}: {stage} must hold exactly one '<name>_modifiers' group; found keys {shown(list(groups))}."
        )
    group = next(iter(groups))
    modifiers = _mapping(groups[group], f"{stage}.{group}", source)
    if list(modifiers) != [MODIFIER_NAME]:
        extra = [m for m in modifiers if m != MODIFIER_NAME]
        what = f"unknown modifier {stage}.{group}.{_key(extra[0])}" if extra else f"{stage}.{group} is empty"
        raise RecipeError(f"{source}: {what}; this package runs exactly one {MODIFIER_NAME}.")
    path = f"{stage}.{group}.{MODIFIER_NAME}"
    kwargs = modifiers[MODIFIER_NAME]
    kwargs = {} if kwargs is None else _mapping(kwargs, path, source)
    misplaced = [k for k in kwargs if k in CALIBRATION_FIELDS]
    hint = f" ({misplaced[0]} is a calibration setting: put it under calibration:)" if misplaced else ""
    _unknown(kwargs, MODIFIER_FIELDS + MODIFIER_EXTRA_FIELDS, path, source, hint)

    calibration = data.get("calibration")
    calibration = {} if calibration is None else _mapping(calibration, "calibration", source)
    _unknown(calibration, CALIBRATION_FIELDS, "calibration", source)

    values = {k: v for k, v in kwargs.items() if k in MODIFIER_FIELDS}
    values.update(calibration)
    config = _config(values, source, path)

    start_step = kwargs.get("start_step")
    if start_step is not None and (isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0):
        raise RecipeError(f"{source}: {path}.start_step={shown(start_step)} is not allowed: it must be an integer >= 0.")

    recipe = Recipe(
        config=config,
        model=_optional_str(data, "model", "", source),
        architecture=_architecture(data.get("architecture"), source),
        evaluation=_evaluation(data.get("evaluation"), source),
        output_dir=_optional_str(data, "output_dir", "", source),
        push_to_hub=_push_to_hub(data.get("push_to_hub"), source),
        start_step=start_step,
        description=_optional_str(data, "description", "", source),
        stage=stage,
        modifiers_group=group,
        source=source,
        recovery=_recovery(data, recovery_stages[0], source) if recovery_stages else None,
    )
    return recipe


def _config(values: dict, source: str, modifier_path: str) -> RankPruneConfig:
    try:
        return RankPruneConfig.from_dict(values)
    except ConfigError as error:
        raise RecipeError(_located(str(error), source, modifier_path)) from error


def _located(message: str, source: str, modifier_path: str) -> str:
    """Prefix a ConfigError message ("name=value is not allowed: ...") with the file and the key path of the
    setting's section (a message about several settings, such as the budget rule's, gets the modifier's path)."""
    match = re.match(r"(\w+)=", message)
    if match:
        name = match.group(1)
        section = "calibration" if name in CALIBRATION_FIELDS else modifier_path
        return f"{source}: {section}.{message}"
    return f"{source}: {modifier_path}: {message}"


def _architecture(value: Any, source: str) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise RecipeError(
            f"{source}: architecture={shown(value)} is not allowed: give a model_type or a list of model_types."
        )
    from .arch import supported_model_types

    supported = supported_model_types()
    unknown = [n for n in names if n not in supported]
    if unknown:
        raise RecipeError(
            f"{source}: architecture={shown(value)} is not allowed: {shown(unknown)} {'is' if len(unknown) == 1 else 'are'} "
            f"not a supported model_type; choose from {supported}."
        )
    return list(names)


def _evaluation(value: Any, source: str) -> dict[str, Any] | None:
    """The evaluation section, checked by the registry of evaluation tasks: every option given is checked, whichever
    tasks are chosen (the model's limits are checked when the model is known)."""
    from .errors import EvaluationError
    from .evaluation.tasks import check_options, get_tasks, option_defaults

    if value is None:
        return None
    value = _mapping(value, "evaluation", source)
    _unknown(value, ("tasks", *option_defaults()), "evaluation", source)
    try:
        get_tasks(value.get("tasks"))
        check_options({key: item for key, item in value.items() if key != "tasks"})
    except EvaluationError as error:
        raise RecipeError(
            f"{source}: evaluation.{error.option}={shown(value.get(error.option))} is not allowed: {error.reason}."
        ) from None
    return copy.deepcopy(value)


def _push_to_hub(value: Any, source: str) -> dict[str, Any] | None:
    if value is None:
        return None
    value = _mapping(value, "push_to_hub", source)
    _unknown(value, PUSH_FIELDS, "push_to_hub", source)
    repo_id = value.get("repo_id")
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise RecipeError(
            f"{source}: push_to_hub.repo_id={shown(repo_id)} is not allowed: give a repo id like 'namespace/name'."
        )
    private = value.get("private")
    if private is not None and not isinstance(private, bool):
        raise RecipeError(f"{source}: push_to_hub.private={shown(private)} is not allowed: give true or false.")
    return dict(value)


# ---------------------------------------------------------------------------------------------------------------
# the model a recipe is for
# ---------------------------------------------------------------------------------------------------------------
def _model_types(model_or_config: Any) -> list[str]:
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, dict):
        candidates = [config, config.get("text_config") or {}]
        types = [c.get("model_type") for c in candidates]
    else:
        from .arch.registry import text_config

        types = [getattr(config, "model_type", None), getattr(text_config(config), "model_type", None)]
    out: list[str] = []
    for name in types:
        if name:
            out.extend([name, name.removesuffix("_rankpruned")])
    return list(dict.fromkeys(out))


def check_architecture(recipe: Recipe, model_or_config: Any) -> None:
    """Refuse a model whose model_type (or its text model's, or the un-pruned type of a pruned model) is not one
    of the recipe's `architecture` (no `architecture` accepts any supported model)."""
    recipe = load_recipe(recipe)
    if recipe.architecture is None:
        return
    types = _model_types(model_or_config)
    if not set(types) & set(recipe.architecture):
        raise RecipeError(
            f"{recipe.label}: architecture={recipe.architecture} but the model is model_type="
            f"{types[0] if types else None!r}: this recipe is for another architecture; use a recipe written for "
            "this model (or change architecture:)."
        )
