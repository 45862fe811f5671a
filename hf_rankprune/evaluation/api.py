"""`evaluate_model`: perplexity, passkey retrieval, state memory and decode speed of a causal LM.

The tasks are registered in `tasks.py`; `evaluate_model` runs the ones asked for. Each task computes its numbers
with a Hugging Face `evaluate` metric module shipped in `hf_rankprune/evaluation/metrics/<name>/<name>.py` and
loaded from that folder (no Hub access); the model work the tasks share (scoring tokens, greedy cached decoding,
reading head counts off the modules) happens here. Results come back as one flat dict, keys `"<task>.<metric>"`
(e.g. `"passkey.accuracy@1024"`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..errors import EvaluationError
from . import passkey as pk

METRICS_DIR = Path(__file__).resolve().parent / "metrics"

_METRIC_CACHE: dict[str, object] = {}


def load_metric(name: str):
    """The packaged `evaluate` metric `name` (a folder of `metrics/`), loaded offline from its folder."""
    known = sorted(path.parent.name for path in METRICS_DIR.glob("*/*.py") if path.stem == path.parent.name)
    if name not in known:
        raise EvaluationError(f"unknown metric {name!r}; known: {', '.join(known)}")
    if name not in _METRIC_CACHE:
        with _offline_for_evaluate():
            import evaluate

            _METRIC_CACHE[name] = evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
    return _METRIC_CACHE[name]


@contextlib.contextmanager
def _offline_for_evaluate():
    """Offline mode for `evaluate` while it loads a packaged metric (no download-count request to the Hub), and only
    then: the rest of the process (an `hf:` calibration spec, a push) keeps the user's setting."""
    names = ("HF_EVALUATE_OFFLINE", "HF_HUB_OFFLINE")
    saved = {key: os.environ.get(key) for key in names}
    os.environ.update(dict.fromkeys(names, "1"))
    if "evaluate.config" in sys.modules:  # evaluate reads the variable once, at import
        sys.modules["evaluate.config"].HF_EVALUATE_OFFLINE = True
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.modules["evaluate.config"].HF_EVALUATE_OFFLINE = (saved["HF_EVALUATE_OFFLINE"] or "").strip().upper() in (
            "1", "ON", "YES", "TRUE"
        )


# ----------------------------------------------------------------------------------------- model utils
def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def _cache_kwarg(model) -> str:
    """transformers v5 names the forward's cache argument `cache` (`past_key_values` is deprecated)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy cached decoding of one sequence (`input_ids` [1, T]); returns the new token ids."""
    kwarg = _cache_kwarg(model)
    ids = input_ids.to(_device(model))
    output = model(input_ids=ids, use_cache=True)
    new: list[int] = []
    for step in range(max_new_tokens):
        token = int(output.logits[0, -1].argmax())
        new.append(token)
        if (eos_token_id is not None and token == eos_token_id) or step == max_new_tokens - 1:
            break
        nxt = torch.tensor([[token]], device=ids.device)
        output = model(input_ids=nxt, use_cache=True, **{kwarg: _output_cache(output)})
    return new


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text`; documents longer than the model's context are fine here (perplexity cuts windows), so
    the tokenizer's "sequence length is longer than the specified maximum" warning is not shown."""
    try:
        return tokenizer.encode(text, add_special_tokens=False, verbose=False)
    except TypeError:  # a tokenizer without `verbose`
        return tokenizer.encode(text, add_special_tokens=False)


# ------------------------------------------------------------------------------------------ perplexity
@torch.no_grad()
def token_log_probs(
    model,
    tokenizer,
    texts: Iterable[str],
    *,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> list[list[float]]:
    """Log-probabilities of the tokens of `texts` (joined by the eos token), window by window.

    With `stride` None (= `window`) the stream is cut into fixed non-overlapping windows and every token but
    the first of a window is scored. With `stride` < `window` (sliding windows) each window after the first
    scores only its last `stride` tokens, the rest being context. `max_tokens` caps the stream's length.
    `progress`: a progress bar over the windows.
    """
    stride = window if stride is None else stride
    if window < 2 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}")
    sep = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    stream: list[int] = []
    for text in texts:
        stream += encode_text(tokenizer, text) + sep
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if max_tokens is not None:
        stream = stream[:max_tokens]
        if len(stream) < max_tokens:
            warnings.warn(
                f"perplexity: the held-out text has only {len(stream):,} tokens, fewer than the {max_tokens:,} "
                f"requested (max_tokens); the perplexity rests on those {len(stream):,} tokens.",
                UserWarning,
                stacklevel=2,
            )
    if len(stream) < 2:
        raise ValueError("perplexity needs at least 2 tokens of text")
    # (start, first scored position within the window) for every window
    spans = []
    start = scored_until = 0
    while True:
        end = min(start + window, len(stream))
        first = max(1, scored_until - start)  # window positions before `first` are context only
        if end - start > first:
            spans.append((start, end, first))
        scored_until = end
        if end == len(stream):
            break
        start += stride
    device = _device(model)
    results: list[list[float]] = []
    bar = progress_bar(len(spans), f"perplexity ({len(stream):,} tokens)", "window", progress)
    for i in range(0, len(spans), batch_size):
        group = spans[i : i + batch_size]
        for same_len in {e - s for s, e, _ in group}:
            chunk = [(s, e, f) for s, e, f in group if e - s == same_len]
            ids = torch.tensor([stream[s:e] for s, e, _ in chunk], device=device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for row, (_, _, first) in enumerate(chunk):
                results.append(logp[row, first - 1 :].double().cpu().tolist())
        bar.update(len(group))
    bar.close()
    return results


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar that draws nothing unless `enabled` (so callers update it either way)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------- memory
def memory_layers(
    model, context_length: int, batch_size: int = 1, state_dtype_bytes: int = 4, kv_dtype_bytes: int | None = None
) -> list[dict]:
    """One row per layer with a cache, with its bytes for `batch_size` sequences of `context_length` tokens, from the
    one memory formula (`hf_rankprune.memory`) on the model's geometry as it is (per-layer head counts of pruned
    models included). Attention caches and conv states are in the model's dtype unless `kv_dtype_bytes` is given."""
    from ..arch import get_adapter
    from ..memory import model_memory_layers

    geometry = get_adapter(model).geometry()
    kv_dtype = DTYPE_OF_SIZE[kv_dtype_bytes] if kv_dtype_bytes else None
    rows = model_memory_layers(
        geometry, context_length, batch_size, DTYPE_OF_SIZE[state_dtype_bytes], kv_dtype=kv_dtype, conv_dtype=kv_dtype
    )
    return [{"layer_types": row["kind"], **{key: row[key] for key in _MEMORY_COLUMNS}} for row in rows]


_MEMORY_COLUMNS = ("num_heads", "state_bytes", "conv_bytes", "cache_bytes", "fixed_bytes")
DTYPE_OF_SIZE = {1: "float8_e4m3fn", 2: "bfloat16", 4: "float32", 8: "float64"}


# ---------------------------------------------------------------------------------------------- speed
@torch.no_grad()
def decode_runs(model, tokenizer, *, prompt_length: int = 128, new_tokens: int = 32, runs: int = 3, seed: int = 0):
    """(num_tokens, seconds) of `runs` timed greedy cached decodes after an untimed warm-up; the prompt's
    prefill is not timed, and every run decodes exactly `new_tokens` tokens (no stop at eos)."""
    if prompt_length < 1 or new_tokens < 1 or runs < 1:
        raise ValueError("speed needs prompt_length, new_tokens and runs >= 1")
    if tokenizer is not None:
        text = " ".join(pk.DEFAULT_FILLER[i % len(pk.DEFAULT_FILLER)] for i in range(prompt_length))
        prompt = encode_text(tokenizer, text)[:prompt_length]
    else:
        generator = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, model.config.vocab_size, (prompt_length,), generator=generator).tolist()
    device = _device(model)
    ids = torch.tensor([prompt], device=device)
    kwarg = _cache_kwarg(model)
    counts, seconds = [], []
    for run in range(runs + 1):
        output = model(input_ids=ids, use_cache=True)
        token = output.logits[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            output = model(input_ids=token, use_cache=True, **{kwarg: _output_cache(output)})
            token = output.logits[:, -1:].argmax(-1)
        int(token[0, 0])  # waits for the device
        elapsed = time.perf_counter() - t0
        if run > 0:  # run 0 warms up
            counts.append(new_tokens)
            seconds.append(max(elapsed, 1e-9))
    return counts, seconds


# ---------------------------------------------------------------------------------------------- entry
def evaluate_model(model, tokenizer, tasks: str | Sequence[str] | None = None, *, progress: bool = False,
                   **options) -> dict:  # fmt: skip
    """Evaluate `model` on `tasks` (default: every registered task); returns a flat dict keyed `"<task>.<metric>"`.

    `options` are the tasks' options (`hf_rankprune.evaluation.tasks` registers each task with its options):

    - perplexity: held-out `texts` (default: the packaged held-out text of `hf_rankprune.evaluation.texts`,
      31,121 tokens of the demo tokenizer) cut into windows of `window` tokens (default 512; `stride` < `window`:
      sliding windows), at most `max_tokens` tokens (default 30,000); fewer tokens than `max_tokens` is a warning
      with the count. Keys: perplexity, mean_nll, num_tokens (tokens scored), max_tokens (requested), window.
    - passkey: `num_keys` keys (default 10) at each of `lengths` x `depths` (tokens, fraction of filler before the
      needle; default (512, 1024) x (0.1, 0.3, 0.5, 0.7, 0.9)), keys of `num_digits` digits drawn from `seed`,
      greedy cached decoding; exact match of the first digits generated. Keys: accuracy, accuracy@<length>,
      accuracy@depth<depth>, num_examples, num_examples@<length>.
    - memory: linear-state, conv-state and attention-cache bytes for `batch_size` sequences at `context_length`
      (default: max(lengths)), from the one memory formula on the model's geometry (the same figures as the
      plan's); `kv_dtype_bytes` (default: the model's) and `state_dtype_bytes` (default 4). Keys: linear_state_bytes, conv_state_bytes, kv_cache_bytes,
      total_bytes, linear_value_heads, ...
    - speed: median decode tokens/s over `speed_runs` runs (default 5) of `speed_new_tokens` greedy tokens (32)
      after a `speed_prompt_length`-token prompt (128), with the spread (min, max); runs that disagree by more than
      25% of the median are a warning. Keys: decode_tokens_per_s, decode_tokens_per_s_min, decode_tokens_per_s_max,
      decode_spread, decode_ms_per_token, num_runs.

    `progress`: progress bars over perplexity windows, passkey examples and speed runs (each names its task).

    Everything is checked before any work: unknown tasks or options, a passkey length grid or perplexity window
    beyond the model's max_position_embeddings, depths outside [0, 1] raise `EvaluationError` (a ValueError).
    """
    from .tasks import check_options, get_tasks, task_names, task_settings

    chosen = get_tasks(task_names() if tasks is None else tasks)
    check_options(options, chosen, _max_positions(model))
    needy = [task.name for task in chosen if task.needs_tokenizer]
    if tokenizer is None and needy:
        raise EvaluationError(f"the {' and '.join(needy)} task(s) need a tokenizer: pass the model's tokenizer.")
    was_training = getattr(model, "training", False)
    model.eval()
    results: dict = {}
    try:
        for task in chosen:
            figures = task.run(model, tokenizer, task_settings(task, options), progress)
            results.update({f"{task.name}.{key}": value for key, value in figures.items()})
    finally:
        model.train(was_training)
    return results


def format_value(key: str, value) -> str:
    """A result rounded for people: accuracies in %, bytes with separators, counts as integers, others 4 digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    metric = key.split(".", 1)[-1]
    if metric.startswith("accuracy"):
        return f"{value:.1%}"
    if metric.endswith("_bytes"):
        return f"{int(value):,} B"
    if metric.startswith("num_") or metric in ("context_length", "max_tokens", "window", "linear_value_heads"):
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) >= 10 else f"{value:.4g}"


def results_table(columns: dict[str, dict]) -> str:
    """`{"original": results, "pruned": results}` (or one column) as an aligned text table, values rounded."""
    keys = list(dict.fromkeys(key for results in columns.values() for key in results))
    rows = [["metric", *columns]] + [
        [key, *(format_value(key, results[key]) if key in results else "-" for results in columns.values())]
        for key in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

