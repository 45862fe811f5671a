"""Model cards for pruned models: `README.md` rendered from `model_cards/pruned_model_card.md` (Jinja2).

    card = build_model_card(plan, base_model="Qwen/Qwen3-Next-80B-A3B-Instruct", evaluation=results)
    write_model_card(folder, plan, stats=stats, ...)      # README.md (+ figures/, rank_stats.json)

The card says what was removed and why (the method of Sun et al., arXiv 2602.02195), the settings or recipe that
reproduce it, the kept heads per layer, the state memory saved at a stated context length, evaluation before and after
(also as `model-index` metadata), the rank figures, and how to load the model (stock transformers for uniform plans;
`import hf_rankprune` or `trust_remote_code=True` for ragged ones). Its metadata parses with `ModelCardData`.

`RankPruner.save_pretrained` and `RankPruner.push_to_hub` write the card through `write_pruner_card`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .arch.registry import recurrence_of
from .config import IMPORTANCE_SCORES, SETTINGS, cli_flag, value_type
from .errors import ModelCardError  # noqa: F401 (re-exported)
from .memory import attention_caches
from .plan import PrunePlan
from .version import __version__

if TYPE_CHECKING:
    from .pruner import RankPruner

__all__ = [
    "BASE_MODEL_RELATION",
    "CARD_FILE",
    "DEFAULT_CONTEXT_LENGTH",
    "TEMPLATE_PATH",
    "ModelCardError",
    "base_model_license",
    "build_model_card",
    "write_model_card",
    "write_pruner_card",
]

# `hf_rankprune/model_cards` links to the top-level `model_cards/`; wheels carry the files it points to.
TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "pruned_model_card.md"
CARD_FILE = "README.md"
FIGURES_DIR = "figures"
STATS_FILE = "rank_stats.json"
RECIPE_FILE = "recipe.yaml"
CARD_FIGURES = ("rank_trajectories.png", "rank_heatmap.png")
DEFAULT_CONTEXT_LENGTH = 32_768
SERVER_MEMORY_GIB = 1  # the cache size the card's "sequences that fit" figures are given for
PAPER_ARXIV = "2602.02195"
# The Hub knows four relations to a base model: adapter, merge, quantized, finetune (there is no "pruned").
# Head pruning is a zero-shot compression of the base model's own weights, with no training: the Hub's "quantized"
# relation (compressed derivatives, listed under the base model's "Quantizations") is the closest; "finetune" would
# claim training, "adapter" and "merge" describe other artefacts.
BASE_MODEL_RELATION = "quantized"
RECOVERED_RELATION = "finetune"  # after recovery the weights were trained: the Hub's relation for that
TAGS = ("hf_rankprune", "pruned", "linear-attention")


# ------------------------------------------------------------------------------------------------ building


def attention_layers_text(model_info: Mapping[str, Any]) -> str:
    """The model's attention layers by cache kind, e.g. "1 full-attention layer" or "2 sliding-attention layers"."""
    layers_by_kind: dict[str, set[int]] = {}
    for cache in attention_caches(model_info):
        layers_by_kind.setdefault(cache["kind"], set()).update(cache["layers"])
    parts = []
    for kind, layers in layers_by_kind.items():
        if layers:
            name = kind.removesuffix("_attention").replace("_", "-")
            parts.append(f"{len(layers)} {name}-attention layer{'s' if len(layers) != 1 else ''}")
    return ", ".join(parts)


def build_model_card(
    plan: PrunePlan,
    *,
    base_model: str | None = None,
    base_model_name: str | None = None,
    license: str | Mapping[str, str] | None = None,
    evaluation: Mapping[str, Mapping[str, float]] | None = None,
    recipe: str | Any | None = None,
    context_length: int | None = None,
    repo_id: str | None = None,
    figures: Sequence[str] = (),
    template_path: str | os.PathLike | None = None,
    vision_language: bool = False,
    recovery: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Render the card of a model pruned by `plan` (relative to the original model).

    Args:
        plan: the pruned model's plan (`model_plan(model)`).
        base_model: Hub id of the original model (metadata `base_model`); None when it is not on the Hub.
        base_model_name: how the text names the original model when `base_model` is None (e.g. a local path).
        license: the base model's license id (e.g. "apache-2.0"), or a mapping with `license`, `license_name`,
            `license_link` (for `license: other`); None leaves it out.
        evaluation: `{"original": {...}, "pruned": {...}}` of flat metric keys ("passkey.accuracy",
            "perplexity.perplexity"), either side optional; the pruned side also goes into `model-index`.
        recipe: the recipe used (YAML text, or an object with `to_yaml()` such as `hf_rankprune.recipe.Recipe`).
        context_length: tokens per sequence for the memory figures (default 32768).
        repo_id: the repo the card will live in (used in the loading snippets).
        figures: file names under `figures/` to show.
        template_path: a Jinja2 template (default: `model_cards/pruned_model_card.md`).
        vision_language: the model is a vision-language model (loaded with `AutoModelForImageTextToText`).
        recovery: what recovery after pruning did (`recovery.json`: `hf_rankprune.recovery.recover`); the card then
            has a Recovery section, the Hub relation `finetune`, and its evaluation is of the recovered model.
    """
    evaluation = _check_evaluation(evaluation)
    context_length = int(context_length or DEFAULT_CONTEXT_LENGTH)
    if context_length < 1:
        raise ModelCardError(f"context_length must be a positive number of tokens, got {context_length}.")
    template = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template.is_file():
        raise ModelCardError(f"Model card template {template} is missing.")

    family = _family(plan.model_type)
    memory = plan.memory(context_length=context_length)
    settings = dict(plan.settings or {})
    percent = f"{100 * plan.removed_fraction:.1f}%"
    name = (
        (repo_id or "").split("/")[-1]
        or (base_model or "").split("/")[-1]
        or Path(base_model_name or "").name
        or family
    )
    title = f"{name}" if repo_id else f"{name}, {percent} of linear-attention heads pruned" + (
        " and recovered" if recovery else "")
    license_fields = _license_fields(license)
    eval_results = _eval_results(evaluation.get("pruned") or {})
    card_data = ModelCardData(
        base_model=base_model,
        base_model_relation=(RECOVERED_RELATION if recovery else BASE_MODEL_RELATION) if base_model else None,
        library_name="transformers",
        pipeline_tag="image-text-to-text" if vision_language else "text-generation",
        tags=[*TAGS, family, f"arxiv:{PAPER_ARXIV}"],
        eval_results=eval_results or None,
        model_name=name if eval_results else None,
        **license_fields,
    )
    info = plan.model_info or {}
    context = {
        "title": title,
        "summary": (
            f"A copy of {base_model or base_model_name or 'the base model'} with {plan.num_removed_value_heads} of its "
            f"{plan.num_value_heads} linear-attention heads removed by state-rank pruning, which shrinks the "
            f"linear-attention state by {_percent(memory.state_reduction)}."
        ),
        "base_model": base_model,
        "base_model_name": base_model_name or "unknown (not a Hub model)",
        "model_type": plan.model_type,
        "recurrence": recurrence_of(plan.model_type) or "linear attention",
        "num_linear_layers": len(plan.layers),
        "attention_layers": attention_layers_text(info),
        "removed_heads": plan.num_removed_value_heads,
        "total_heads": plan.num_value_heads,
        "removed_percent": percent,
        "uniform": plan.is_uniform,
        "stock": plan.loads_in_stock,
        "auto_class": "AutoModelForImageTextToText" if vision_language else "AutoModelForCausalLM",
        "version": __version__,
        "settings": _Settings(settings),
        "direction_text": _direction_text(settings),
        "importance_text": _importance_text(settings),
        "settings_yaml": yaml.safe_dump(settings, sort_keys=False, default_flow_style=None).strip() if settings else "",
        "recipe": _recipe_text(recipe),
        "cli_flags": _cli_flags(settings),
        "composed": "steps" in settings,
        "layers": [
            {
                "layer": layer.layer,
                "value_kept": layer.num_kept_value_heads,
                "value_total": layer.num_value_heads,
                "key_kept": layer.num_kept_key_heads,
                "key_total": layer.num_key_heads,
                "removed": ", ".join(map(str, layer.removed_value_heads)) or "none",
            }
            for layer in plan.layers
        ],
        "memory": {
            "context_length": f"{memory.context_length:,}",
            "state_dtype": memory.state_dtype,
            "kv_dtype": memory.kv_dtype,
            "state_before": _bytes(memory.state_bytes_before),
            "state_after": _bytes(memory.state_bytes_after),
            "state_reduction": _percent(memory.state_reduction),
            "conv_before": _bytes(memory.conv_bytes_before),
            "conv_after": _bytes(memory.conv_bytes_after),
            "kv": _bytes(memory.kv_cache_bytes),
            "fixed": _bytes(memory.fixed_bytes) if memory.fixed_bytes else None,
            "total_before": _bytes(memory.total_bytes_before),
            "total_after": _bytes(memory.total_bytes_after),
            "total_reduction": _percent(memory.total_reduction),
        },
        "capacity": [
            {
                "model": row["model"],
                "state_dtype": row["state_dtype"],
                "per_sequence": _bytes(row["bytes_per_sequence"]),
                "sequences": f"{row['sequences']:,}",
            }
            for row in plan.capacity(SERVER_MEMORY_GIB * 2**30, memory.context_length)
        ],
        "server_memory_gib": SERVER_MEMORY_GIB,
        "replicated_key_heads": plan.num_replicated_key_heads,
        "evaluation": _evaluation_rows(evaluation),
        "evaluation_note": _evaluation_note(evaluation),
        "figures": list(figures),
        "repo_id": repo_id or "path/to/this/model",
        "recovery": _recovery_context(recovery) if recovery else None,
    }
    try:
        card = ModelCard.from_template(card_data, template_path=str(template), **context)
    except Exception as error:  # jinja2 errors name the template line
        raise ModelCardError(f"Cannot render the model card template {template}: {error}") from error
    return ModelCard(_tidy(card.content))


def write_model_card(
    folder: str | os.PathLike,
    plan: PrunePlan,
    *,
    stats: Any = None,
    **card_kwargs: Any,
) -> ModelCard:
    """Write `README.md` into `folder` and, with `stats` (a `RankStats`), the rank figures (`figures/*.png`) and
    `rank_stats.json`, and with a `recipe` that recipe as `recipe.yaml`; `card_kwargs` go to `build_model_card`.
    Returns the card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures: list[str] = []
    if stats is not None:
        from .report import analyze, plot_figures

        written = plot_figures(stats, analyze(stats), folder / FIGURES_DIR)
        figures = [name for name in CARD_FIGURES if name in written]
        stats.to_json_file(folder / STATS_FILE)
    card_kwargs.setdefault("figures", figures)
    card = build_model_card(plan, **card_kwargs)
    recipe = _recipe_text(card_kwargs.get("recipe"))
    if recipe is not None:  # the card's reproduce line runs `--recipe recipe.yaml`: the folder carries it
        (folder / RECIPE_FILE).write_text(recipe + "\n", encoding="utf-8")
    card.save(folder / CARD_FILE)
    return card


def write_pruner_card(pruner: RankPruner, folder: str | os.PathLike, *, repo_id: str | None = None) -> ModelCard:
    """The card of a `RankPruner`'s pruned model: its plan, statistics, `evaluation_results`, recipe and base model."""
    from .surgery import model_plan

    model = pruner.model
    plan = model_plan(model)
    if plan is None:
        raise ModelCardError("The pruner's model carries no prune plan: prune it before writing its card.")
    name = str(pruner.model_name) if pruner.model_name else None
    base_model = pruner.base_model or hub_model_id(name)
    # the license of the base model's card: from the folder it was loaded from (the demo model's), or its Hub id
    source = pruner.source_model
    license = getattr(model.config, "license", None) or base_model_license(source or name) or (
        base_model_license(name) if source else None
    )
    evaluation = pruner.evaluation_results or {}
    measured = [side.get("memory.context_length") for side in evaluation.values() if isinstance(side, Mapping)]
    measured = [int(value) for value in measured if isinstance(value, (int, float)) and not isinstance(value, bool)]
    max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if measured:  # one context length throughout: the one the evaluation measured memory at
        context_length = measured[0]
    else:
        context_length = min(DEFAULT_CONTEXT_LENGTH, int(max_positions)) if max_positions else None
    return write_model_card(
        folder,
        plan,
        stats=pruner.stats,
        base_model=base_model,
        base_model_name=name,
        license=license,
        evaluation=evaluation or None,
        recipe=pruner.recipe,
        context_length=context_length,
        repo_id=repo_id,
        vision_language=getattr(model.config, "vision_config", None) is not None,
    )


def write_recovered_card(folder: str | os.PathLike, pruned_folder: str | os.PathLike, plan: PrunePlan,
                         recovery: Mapping[str, Any]) -> ModelCard:  # fmt: skip
    """The card of a recovered model: the pruned model's (its base model, license, recipe, rank figures and
    statistics travel along from `pruned_folder`) plus what recovery did; `recovery.json` beside it."""
    import json
    import shutil

    from .recovery import RECOVERY_FILE

    folder, pruned_folder = Path(folder), Path(pruned_folder)
    base_model = license = None
    if (pruned_folder / CARD_FILE).is_file():
        data = ModelCard.load(pruned_folder / CARD_FILE).data
        base_model = data.base_model if isinstance(data.base_model, str) else None
        license = {key: getattr(data, key) for key in ("license", "license_name", "license_link")
                   if getattr(data, key, None)} or None  # fmt: skip
    for name in (STATS_FILE, RECIPE_FILE):
        if (pruned_folder / name).is_file():
            shutil.copyfile(pruned_folder / name, folder / name)
    figures = []
    if (pruned_folder / FIGURES_DIR).is_dir():
        shutil.copytree(pruned_folder / FIGURES_DIR, folder / FIGURES_DIR, dirs_exist_ok=True)
        figures = [name for name in CARD_FIGURES if (folder / FIGURES_DIR / name).is_file()]
    recipe = (folder / RECIPE_FILE).read_text(encoding="utf-8") if (folder / RECIPE_FILE).is_file() else None
    (folder / RECOVERY_FILE).write_text(json.dumps(recovery, indent=2) + "\n", encoding="utf-8")
    card = build_model_card(plan, base_model=base_model, base_model_name=str(plan.original_model or pruned_folder),
                            license=license, recipe=recipe, figures=figures, recovery=recovery,
                            evaluation=recovery.get("evaluation"))  # fmt: skip
    card.save(folder / CARD_FILE)
    return card


def _recovery_context(recovery: Mapping[str, Any]) -> dict[str, Any]:
    """The Recovery section's values, from `recovery.json`."""
    from .recovery import RECOVERY_SETTINGS, RecoveryConfig

    settings = {**RecoveryConfig().to_dict(), **(recovery.get("settings") or {})}
    history = recovery.get("loss_history") or []
    method = ("every weight trained (full fine-tuning)" if settings["method"] == "full" else
              f"LoRA adapters of rank {settings['lora_rank']} on every linear layer (peft), merged into the weights")  # fmt: skip
    defaults = RecoveryConfig().to_dict()
    flags = [f"--teacher {recovery['teacher']}"] if recovery.get("teacher") else []
    for spec in RECOVERY_SETTINGS:
        value = settings[spec.name]
        if value != defaults[spec.name] and value is not None:
            shown_value = ",".join(value) if isinstance(value, list) else value
            flags.append(f"{cli_flag(spec.name)} {shown_value}")
    batch = settings["batch_size"] * settings["gradient_accumulation_steps"]
    return {
        "summary": f"{recovery.get('steps')} steps of knowledge distillation from the base model "
                   f"({'full fine-tuning' if settings['method'] == 'full' else 'LoRA, merged'})",
        "teacher": recovery.get("teacher") or "the original model",
        "method_text": method,
        "steps": recovery.get("steps"),
        "batch": batch,
        "seq_len": settings["seq_len"],
        "tokens": f"{int(recovery.get('tokens_seen') or 0):,}",
        "data": ", ".join(recovery.get("data") or ["builtin"]) + (
            f"; {settings['retrieval_mix']:.0%} of the samples passkey-like retrieval documents, their answer tokens "
            f"weighted {settings['answer_weight']:g}" if settings["retrieval_mix"] > 0 else ""),
        "learning_rate": settings["learning_rate"],
        "lr_scheduler": settings["lr_scheduler"],
        "seed": settings["seed"],
        "temperature": settings["temperature"],
        "hard_label_weight": settings["hard_label_weight"],
        "first_loss": f"{history[0]['loss']:.4f}" if history else "n/a",
        "last_loss": f"{history[-1]['loss']:.4f}" if history else "n/a",
        "seconds": recovery.get("seconds"),
        "flags": " ".join(flags),
    }


# ------------------------------------------------------------------------------------------------ base model


def hub_model_id(name: str | None) -> str | None:
    """The Hub model id behind `name`: `name` itself if it is an id "namespace/name" and not a local path, the id of
    a Hub cache snapshot folder (`.../models--org--name/snapshots/<sha>`); else None (a bare name is more likely a
    class name than a legacy un-namespaced Hub id)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name and Path(name).expanduser().is_dir():
        return _snapshot_repo_id(Path(name).expanduser().resolve())
    if not name or name.count("/") != 1 or name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _snapshot_repo_id(folder: Path) -> str | None:
    """"org/name" of a Hub cache snapshot folder `.../models--org--name/snapshots/<sha>`, else None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if folder.parent.name != "snapshots" or not folder.parent.parent.name.startswith("models--"):
        return None
    repo_id = folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id


def base_model_license(name_or_path: str | os.PathLike | None, *, endpoint: str | None = None) -> dict[str, str] | None:
    """The license metadata (`license`, and `license_name`/`license_link` if set) of a base model's card: read from
    its folder, or fetched from the Hub (`endpoint`, default `HF_ENDPOINT`) for a Hub id; None when there is no card
    or it names no license."""
    if not name_or_path:
        return None
    readme = Path(name_or_path).expanduser() / CARD_FILE
    if readme.is_file():
        text = readme.read_text(encoding="utf-8-sig")
    else:
        from .hub import model_card_text

        repo_id = hub_model_id(str(name_or_path))
        text = model_card_text(repo_id, endpoint=endpoint) if repo_id is not None else None
        if text is None:
            return None
    try:
        data = ModelCard(text, ignore_metadata_errors=True).data
    except Exception:  # a malformed card of the base model must not stop the save
        return None
    return _license_of(data)


def _license_of(data: Any) -> dict[str, str] | None:
    if not getattr(data, "license", None):
        return None
    fields = {"license": str(data.license)}
    for key in ("license_name", "license_link"):
        if getattr(data, key, None):
            fields[key] = str(getattr(data, key))
    return fields


# ------------------------------------------------------------------------------------------------ helpers


class _Settings(dict):
    """Plan settings for the template: missing keys read as None (composed plans keep theirs under `steps`)."""

    def __getattr__(self, key: str) -> Any:
        if "steps" in self and key not in self:
            steps = self["steps"]
            return steps[-1].get(key) if steps and isinstance(steps[-1], Mapping) else None
        return self.get(key)


def _family(model_type: str) -> str:
    family = model_type.removesuffix("_rankpruned").removesuffix("_text")
    return family or model_type


def _license_fields(license: str | Mapping[str, str] | None) -> dict[str, str]:
    if not license:
        return {}
    if isinstance(license, str):
        return {"license": license}
    if not isinstance(license, Mapping) or not license.get("license"):
        raise ModelCardError(f"license must be a license id or a mapping with a 'license' key, got {license!r}.")
    return {key: str(license[key]) for key in ("license", "license_name", "license_link") if license.get(key)}


def _direction_text(settings: Mapping[str, Any]) -> str:
    direction = _Settings(settings).direction
    if _Settings(settings).score in IMPORTANCE_SCORES:  # a high importance score marks an important head
        return {
            "saturated": "most important (highest-score) heads, as requested,",
            "low_rank": "least important (lowest-score) heads",
            "random": "randomly chosen heads (a control)",
        }.get(direction, f"`{direction}` heads")
    return {
        "saturated": "most saturated (highest-score) heads, the paper's choice,",
        "low_rank": "least saturated (lowest-score) heads, the opposite of the paper's choice,",
        "random": "randomly chosen heads (a control)",
    }.get(direction, f"`{direction}` heads" if direction else "selected heads")


def _importance_text(settings: Mapping[str, Any]) -> str | None:
    """What an importance score (kl, taylor, activation, decay) measured, in a sentence; None for rank scores."""
    measured = _Settings(settings).score_measured
    if _Settings(settings).score not in IMPORTANCE_SCORES or not isinstance(measured, Mapping):
        return None
    score = _Settings(settings).score
    what = {
        "kl": "the KL divergence of the next-token distributions when the head's output is zeroed"
        + (", removing one head at a time and re-scoring the rest" if measured.get("greedy") else ""),
        "taylor": "|mask x dLoss/dmask| of a head mask (first-order importance)",
        "activation": "the norm of the head's output channels (Minitron-style)",
        "decay": "the memory length of the head's gate, from A_log and dt_bias (no data)",
    }[score]
    if score == "decay":
        return f"hf_rankprune scored every linear-attention head by {what}"
    retrieval = ""
    if measured.get("retrieval_samples"):
        retrieval = (f", {measured['retrieval_samples']} of them retrieval documents (passkey-like, none an "
                     "evaluation example")  # fmt: skip
        weight = measured.get("answer_weight", _Settings(settings).answer_weight)
        if score != "activation" and isinstance(weight, (int, float)):
            retrieval += f"; each answer token weighted {weight:g}, every other token 1"
        retrieval += ")"
    elif measured.get("retrieval_skipped"):
        retrieval = f" (no retrieval documents: {measured['retrieval_skipped']})"
    return (
        f"hf_rankprune scored every linear-attention head by {what}, on {measured.get('samples')} calibration samples "
        f"of {measured.get('seq_len')} tokens{retrieval} ({measured.get('forwards')} forward and "
        f"{measured.get('backwards')} backward passes)"
    )


def _recipe_text(recipe: Any) -> str | None:
    if recipe is None:
        return None
    if isinstance(recipe, str):
        return recipe.strip() or None
    to_yaml = getattr(recipe, "to_yaml", None)
    if callable(to_yaml):
        return str(to_yaml()).strip()
    if isinstance(recipe, Mapping):
        return yaml.safe_dump(dict(recipe), sort_keys=False).strip()
    raise ModelCardError(f"recipe must be YAML text or a Recipe, got {type(recipe).__name__}.")


# the plan records the calibration size it measured on under these keys (`plan_from_stats`, `RankPruner.plan`)
_MEASURED_SETTINGS = {"num_samples": "calibration_samples", "seq_len": "calibration_seq_len"}


def _cli_flags(settings: Mapping[str, Any]) -> str:
    """The `hf-rankprune prune` flags of a one-step plan's settings (empty for composed plans): every setting with a
    flag that the plan records, in the settings' declared order."""
    flags = []
    for spec in SETTINGS:
        value = settings.get(_MEASURED_SETTINGS.get(spec.name, spec.name))
        if spec.metadata["cli"] is None or value is None or value is False or value == []:
            continue
        flag = cli_flag(spec.name)
        if value is True:  # a switch
            flags.append(flag)
        elif value_type(spec) == list[int]:
            flags.append(f"{flag} {','.join(map(str, value))}")
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def _check_evaluation(evaluation: Any) -> dict[str, dict[str, float]]:
    if evaluation is None:
        return {}
    if not isinstance(evaluation, Mapping):
        raise ModelCardError(
            "evaluation results must be a mapping {'original': {...}, 'pruned': {...}} of flat metric keys, "
            f"got {type(evaluation).__name__}."
        )
    unknown = sorted(set(evaluation) - {"original", "pruned"})
    if unknown:
        raise ModelCardError(
            f"evaluation results have unknown sides {unknown}: use 'original' and/or 'pruned', each a mapping of flat "
            "metric keys such as 'passkey.accuracy'."
        )
    checked = {}
    for side, metrics in evaluation.items():
        if metrics is None:
            continue
        if not isinstance(metrics, Mapping):
            raise ModelCardError(f"evaluation results[{side!r}] must map metric keys to numbers, got {metrics!r}.")
        values = {}
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # lists, strings and nested details stay out of the card
            values[str(key)] = value
        checked[side] = values
    return checked


def _split_key(key: str) -> tuple[str, str]:
    task, _, metric = key.partition(".")
    return (task, metric) if metric else ("evaluation", task)


def _eval_results(metrics: Mapping[str, float]) -> list[EvalResult]:
    """`model-index` entries for the pruned model's numeric quality metrics (counts like `num_tokens`, and the figures
    of tasks registered as no scores, such as memory and speed, left out: they stay in the card's table). Tasks are
    labelled as the registry of evaluation tasks labels them; unregistered ones by their name."""
    from .evaluation.tasks import registered_tasks

    tasks = registered_tasks()
    results = []
    for key, value in metrics.items():
        task, metric = _split_key(key)
        known = tasks.get(task)
        if (known is not None and not known.is_score) or metric.startswith("num_") or not math.isfinite(float(value)):
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type=task,
                dataset_name=known.label if known is not None else task,
                metric_type=metric.split("@")[0],
                metric_name=key,
                metric_value=value,
            )
        )
    return results


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _signed(value: float, key: str) -> str:
    if key.endswith("_bytes"):
        return ("+" if value >= 0 else "-") + _bytes(abs(int(value)))
    if abs(value) >= 1000:
        return f"{value:+,.0f}"
    return f"{value:+.4g}"


def _evaluation_rows(evaluation: Mapping[str, Mapping[str, float]]) -> list[dict[str, str]]:
    original, pruned = evaluation.get("original") or {}, evaluation.get("pruned") or {}
    keys = list(original) + [key for key in pruned if key not in original]
    rows = []
    for key in keys:
        before, after = original.get(key), pruned.get(key)
        change = ""
        if before is not None and after is not None and math.isfinite(before) and math.isfinite(after):
            change = _signed(after - before, key) if after != before else "0"
            if before and after != before:
                change += f" ({(after - before) / abs(before):+.1%})"
        show = _bytes if key.endswith("_bytes") else _number
        rows.append({"metric": key, "original": show(before) if before is not None else "-",
                     "pruned": show(after) if after is not None else "-", "change": change})  # fmt: skip
    return rows


def _evaluation_note(evaluation: Mapping[str, Mapping[str, float]]) -> str:
    """What the figures rest on (tokens, examples, context, runs), and which side was evaluated."""
    sides = [side for side in ("original", "pruned") if evaluation.get(side)]
    notes = []
    metrics = evaluation.get("pruned") or evaluation.get("original") or {}
    if "perplexity.num_tokens" in metrics:
        window = metrics.get("perplexity.window")
        notes.append(f"Perplexity over {int(metrics['perplexity.num_tokens']):,} held-out tokens"
                     + (f" (windows of {int(window)} tokens)" if window else "") + ".")  # fmt: skip
    if "passkey.num_examples" in metrics:
        lengths = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("passkey.num_examples@"))
        per = f" ({int(metrics[f'passkey.num_examples@{lengths[0]}'])} per length)" if lengths else ""
        notes.append(f"Passkey accuracy over {int(metrics['passkey.num_examples'])} examples{per}.")
    if "memory.context_length" in metrics:
        notes.append(f"Memory at {int(metrics['memory.context_length']):,} tokens per sequence, as in Memory above.")
    if "speed.num_runs" in metrics:
        notes.append(f"Speed: median of {int(metrics['speed.num_runs'])} decoding runs on the machine that made "
                     "this card (hardware-dependent).")  # fmt: skip
    if sides == ["pruned"]:
        notes.append("Only the pruned model was evaluated.")
    if sides == ["original"]:
        notes.append("Only the original model was evaluated.")
    return " ".join(notes)


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"  # pragma: no cover


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _tidy(text: str) -> str:
    """Collapse the blank lines Jinja blocks leave behind (never inside code blocks, which have none to collapse)."""
    lines, blank = [], 0
    for line in text.splitlines():
        blank = blank + 1 if not line.strip() else 0
        if blank <= 1:
            lines.append(line.rstrip())
    return "\n".join(lines).strip() + "\n"
