"""The registry of evaluation tasks: what `evaluate_model`, the CLI, recipes and model cards know about a task.

A task is one `EvaluationTask`: the options it takes (keyword arguments of `evaluate_model`, with defaults), the one
function that checks them, the function that runs it, the packaged metric it computes with, and how model cards
show its figures. Adding a task is one `@register_task(...)` here; nothing else lists tasks.

    @register_task("perplexity", metric="perplexity", options={"window": 512, ...}, validate=_check_perplexity,
                   label="held-out text perplexity")
    def _perplexity(model, tokenizer, options, progress) -> dict: ...   # {"perplexity": 53.1, ...}

Options form one namespace across tasks: two tasks may share one (`lengths`, `seed`) only with the same default.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from ..errors import EvaluationError
from ..utils import shown
from . import api
from . import passkey as pk

__all__ = [
    "EvaluationTask",
    "check_options",
    "get_tasks",
    "option_defaults",
    "register_task",
    "registered_tasks",
    "task_names",
    "task_settings",
]

SPEED_SPREAD_WARNING = 0.25  # (max - min) / median tokens/s above which the speed runs are reported as disagreeing

Run = Callable[[Any, Any, Mapping[str, Any], bool], dict]  # (model, tokenizer, options, progress) -> figures
Validate = Callable[[Mapping[str, Any], int | None], None]  # (options, max_position_embeddings or None)


@dataclass(frozen=True)
class EvaluationTask:
    """One evaluation task.

    `options`: the keyword arguments it takes, with their defaults. `validate(options, max_positions)` raises
    `EvaluationError` naming the first bad option (`max_positions` None: the model is not known yet).
    `run(model, tokenizer, options, progress)` returns its figures keyed by metric, `evaluate_model` prefixes them
    with the task name. `metric`: the packaged `evaluate` module it computes with. `is_score`: its figures are quality
    scores a model card lists in `model-index` (memory and speed are measured, not scored). `label`: how a card
    names it.
    """

    name: str
    run: Run
    validate: Validate
    metric: str
    options: Mapping[str, Any]
    label: str
    is_score: bool = True
    needs_tokenizer: bool = False


_TASKS: dict[str, EvaluationTask] = {}


def register_task(
    name: str,
    *,
    metric: str,
    options: Mapping[str, Any],
    validate: Validate,
    label: str,
    is_score: bool = True,
    needs_tokenizer: bool = False,
) -> Callable[[Run], Run]:
    """Decorator registering its function as the `run` of task `name`; a taken name, or an option another task
    takes with a different default, is refused."""

    def register(run: Run) -> Run:
        if name in _TASKS:
            raise EvaluationError(f"evaluation task {name!r} is already registered.")
        shared = option_defaults()
        for option, default in options.items():
            if option in shared and shared[option] != default:
                raise EvaluationError(
                    f"task {name!r}: option {option!r} defaults to {default!r}, but another task takes it with "
                    f"default {shared[option]!r}; options are shared by name, so give it the same default."
                )
        _TASKS[name] = EvaluationTask(name, run, validate, metric, MappingProxyType(dict(options)), label, is_score,
                                      needs_tokenizer)  # fmt: skip
        return run

    return register


def registered_tasks() -> Mapping[str, EvaluationTask]:
    """Every registered task by name, in registration order (the order results come in); read-only."""
    return MappingProxyType(_TASKS)


def task_names() -> tuple[str, ...]:
    """The registered task names, in registration order."""
    return tuple(_TASKS)


def option_defaults() -> dict[str, Any]:
    """Every option any task takes, with its default."""
    return {option: default for task in _TASKS.values() for option, default in task.options.items()}


def get_tasks(names: str | Iterable[str] | None) -> tuple[EvaluationTask, ...]:
    """The tasks called `names` (one name or several), in registration order; unknown or no names are refused."""
    if isinstance(names, str):
        names = (names,)
    if names is None or not isinstance(names, Iterable) or isinstance(names, Mapping):
        raise _bad("tasks", names, f"give a non-empty list of task names from {', '.join(_TASKS)}")
    names = list(names)
    unknown = [n for n in names if not isinstance(n, str) or n not in _TASKS]
    if unknown or not names:
        raise _bad("tasks", names, f"unknown task(s) {unknown or names!r}; known tasks: {', '.join(_TASKS)}")
    return tuple(task for task in _TASKS.values() if task.name in names)


def check_options(
    options: Mapping[str, Any], tasks: Iterable[EvaluationTask] | None = None, max_positions: int | None = None
) -> None:
    """Refuse option names no task takes, and let each of `tasks` (default: every task, so that every option given is
    checked) validate its options, its defaults standing in for those not given, against the model's
    `max_positions` (None: no model limit is checked)."""
    known = option_defaults()
    unknown = [name for name in options if name not in known]
    if unknown:
        raise _bad(unknown[0], options[unknown[0]], f"no task takes it; options are {', '.join(known)}")
    for task in _TASKS.values() if tasks is None else tasks:
        task.validate(task_settings(task, options), max_positions)


def task_settings(task: EvaluationTask, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options `task` takes: given ones, and its defaults for the rest."""
    return {name: options.get(name, default) for name, default in task.options.items()}


# ------------------------------------------------------------------------------------------------ checks
def _bad(option: str, value: Any, reason: str) -> EvaluationError:
    return EvaluationError(f"{option}={shown(value)} is not allowed: {reason}.", option=option, reason=reason)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(options: Mapping[str, Any], name: str, minimum: int, optional: bool = False) -> None:
    value = options[name]
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        raise _bad(name, value, f"give an integer >= {minimum}" + (" (or null)" if optional else ""))


def _check_sequence(options: Mapping[str, Any], name: str, fits: Callable[[Any], bool], what: str) -> None:
    value = options[name]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value or not all(map(fits, value)):
        raise _bad(name, value, f"give a non-empty list of {what}")


def _check_context(options: Mapping[str, Any], name: str, longest: int, max_positions: int | None) -> None:
    if max_positions is not None and longest > max_positions:
        raise _bad(name, options[name], f"goes beyond the model's context (max_position_embeddings={max_positions})")


def _check_lengths(options: Mapping[str, Any]) -> None:
    _check_sequence(options, "lengths", lambda n: _is_int(n) and n > 0, "positive token counts")


# ---------------------------------------------------------------------------------------------- perplexity
def _check_perplexity(options: Mapping[str, Any], max_positions: int | None) -> None:
    _check_int(options, "window", 2)
    stride = options["stride"]
    if stride is not None and (not _is_int(stride) or not 1 <= stride <= options["window"]):
        raise _bad("stride", stride, "give an integer in [1, window] (or null for non-overlapping windows)")
    _check_int(options, "max_tokens", 2, optional=True)
    texts = options["texts"]
    if texts is not None and (isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable)):
        raise _bad("texts", texts, "give a list of texts (or null for the packaged held-out text)")
    _check_context(options, "window", options["window"], max_positions)


@register_task(
    "perplexity",
    metric="perplexity",
    options={"texts": None, "window": 512, "stride": None, "max_tokens": 30_000},
    validate=_check_perplexity,
    label="held-out text perplexity",
    needs_tokenizer=True,
)
def _perplexity(model, tokenizer, options: Mapping[str, Any], progress: bool) -> dict:
    texts = options["texts"]
    if texts is None:
        from .texts import heldout_texts

        texts = heldout_texts()
    log_probs = api.token_log_probs(model, tokenizer, texts, window=options["window"], stride=options["stride"],
                                    max_tokens=options["max_tokens"], progress=progress)  # fmt: skip
    figures = dict(api.load_metric("perplexity").compute(log_probs=log_probs))
    if options["max_tokens"] is not None:
        figures["max_tokens"] = int(options["max_tokens"])
    figures["window"] = options["window"]
    return figures


# ------------------------------------------------------------------------------------------------- passkey
def _check_passkey(options: Mapping[str, Any], max_positions: int | None) -> None:
    _check_lengths(options)
    _check_context(options, "lengths", max(options["lengths"]), max_positions)
    _check_sequence(options, "depths", lambda d: isinstance(d, numbers.Real) and not isinstance(d, bool)
                    and 0.0 <= d <= 1.0, "depths where every depth must lie in [0, 1]")  # fmt: skip
    _check_int(options, "num_keys", 1)
    _check_int(options, "seed", 0)
    _check_int(options, "num_digits", 1)
    _check_sequence(options, "filler", lambda s: isinstance(s, str), "filler sentences")


@register_task(
    "passkey",
    metric="passkey",
    options={"lengths": (512, 1024), "depths": (0.1, 0.3, 0.5, 0.7, 0.9), "num_keys": 10, "seed": 0,
             "num_digits": 5, "filler": pk.DEFAULT_FILLER},  # fmt: skip
    validate=_check_passkey,
    label="passkey retrieval",
    needs_tokenizer=True,
)
def _passkey(model, tokenizer, options: Mapping[str, Any], progress: bool) -> dict:
    lengths, num_digits = options["lengths"], options["num_digits"]
    samples = pk.evaluation_samples(tokenizer, lengths, options["depths"], options["num_keys"], options["seed"],
                                    num_digits, options["filler"])  # fmt: skip
    eos = getattr(tokenizer, "eos_token_id", None)
    predictions = []
    bar = api.progress_bar(len(samples), f"passkey ({len(samples)} examples)", "example", progress)
    for sample in samples:
        ids = torch.tensor([api.encode_text(tokenizer, sample.prompt)])
        new = api.greedy_generate(model, ids, num_digits + 2, eos_token_id=eos)
        predictions.append(tokenizer.decode(new, skip_special_tokens=True))
        bar.update(1)
    bar.close()
    figures = dict(api.load_metric("passkey").compute(
        predictions=predictions,
        references=[s.key for s in samples],
        lengths=[s.length for s in samples],
        depths=[s.depth for s in samples],
    ))  # fmt: skip
    for length in lengths:
        figures[f"num_examples@{int(length)}"] = sum(s.length == length for s in samples)
    return figures


# -------------------------------------------------------------------------------------------------- memory
def _check_memory(options: Mapping[str, Any], max_positions: int | None) -> None:
    _check_lengths(options)  # the default context length is the longest passkey length
    _check_int(options, "context_length", 1, optional=True)
    _check_int(options, "batch_size", 1)
    _check_int(options, "kv_dtype_bytes", 1, optional=True)
    _check_int(options, "state_dtype_bytes", 1)
    for name in ("kv_dtype_bytes", "state_dtype_bytes"):
        if options[name] is not None and options[name] not in api.DTYPE_OF_SIZE:
            raise _bad(name, options[name], f"give one of {sorted(api.DTYPE_OF_SIZE)} (bytes per element)")


@register_task(
    "memory",
    metric="memory",
    options={"context_length": None, "lengths": (512, 1024), "batch_size": 1, "kv_dtype_bytes": None,
             "state_dtype_bytes": 4},  # fmt: skip
    validate=_check_memory,
    label="inference memory",
    is_score=False,
)
def _memory(model, tokenizer, options: Mapping[str, Any], progress: bool) -> dict:
    context_length = options["context_length"]
    context_length = int(context_length if context_length is not None else max(options["lengths"]))
    rows = api.memory_layers(
        model, context_length, options["batch_size"], options["state_dtype_bytes"], options["kv_dtype_bytes"]
    )
    return dict(api.load_metric("memory").compute(
        **{k: [r[k] for r in rows] for k in rows[0]},
        context_length=context_length,
        batch_size=options["batch_size"],
        state_dtype_bytes=options["state_dtype_bytes"],
    ))  # fmt: skip


# --------------------------------------------------------------------------------------------------- speed
def _check_speed(options: Mapping[str, Any], max_positions: int | None) -> None:
    for name in ("speed_prompt_length", "speed_new_tokens", "speed_runs"):
        _check_int(options, name, 1)
    _check_int(options, "seed", 0)


@register_task(
    "speed",
    metric="speed",
    options={"speed_prompt_length": 128, "speed_new_tokens": 32, "speed_runs": 5, "seed": 0},
    validate=_check_speed,
    label="decoding speed",
    is_score=False,  # it measures the machine as much as the model
)
def _speed(model, tokenizer, options: Mapping[str, Any], progress: bool) -> dict:
    counts, seconds = api.decode_runs(model, tokenizer, prompt_length=options["speed_prompt_length"],
                                      new_tokens=options["speed_new_tokens"], runs=options["speed_runs"],
                                      seed=options["seed"])  # fmt: skip
    figures = dict(api.load_metric("speed").compute(num_tokens=counts, seconds=seconds))
    if figures["decode_spread"] > SPEED_SPREAD_WARNING:
        warnings.warn(
            f"speed: the {len(counts)} decoding runs disagree ({figures['decode_tokens_per_s_min']:.1f} to "
            f"{figures['decode_tokens_per_s_max']:.1f} tokens/s, median {figures['decode_tokens_per_s']:.1f}): "
            "the machine is busy or throttling, so treat the speed figure as noise.",
            UserWarning,
            stacklevel=3,  # the caller of evaluate_model
        )
    return figures
