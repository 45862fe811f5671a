"""The one memory formula (hf_rankprune.memory) against the caches transformers really allocates, for every family,
before and after pruning."""

from __future__ import annotations

import pytest
import torch
from _pruning_reference import PLANS
from conftest import build_tiny_model
from families import FAMILIES

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.memory import attention_cache_bytes, model_memory_layers
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan


def cache_tensors(value, seen=None):
    """Every tensor (but scalars) reachable from a cache object (its layers' dicts, lists and attributes), each once."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and id(value) not in seen:  # not scalar bookkeeping (a window size)
            seen.add(id(value))
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from cache_tensors(item, seen)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from cache_tensors(item, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, type)):
        for item in vars(value).values():
            yield from cache_tensors(item, seen)


def real_cache_bytes(model, tokens: int) -> dict[int, int]:
    """Bytes per layer of the cache a forward over `tokens` tokens leaves (one sequence)."""
    ids = torch.randint(0, 300, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    return {
        index: sum(t.numel() * t.element_size() for t in cache_tensors(layer))
        for index, layer in enumerate(cache.layers)
    }


@pytest.mark.parametrize("pruned", [False, True], ids=["original", "ragged"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_formula_matches_the_real_cache(family, pruned):
    model = build_tiny_model(family)
    if pruned:
        apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    tokens = 40  # beyond the tiny sliding window (8): a sliding layer keeps only its window
    real = real_cache_bytes(model, tokens)
    rows = model_memory_layers(get_adapter(model).geometry(), tokens)
    predicted: dict[int, int] = {}
    for row in rows:
        predicted[row["layer"]] = predicted.get(row["layer"], 0) + row["state_bytes"] + row["conv_bytes"]
        predicted[row["layer"]] += row["cache_bytes"]
    assert predicted == {index: size for index, size in real.items() if size}


def test_attention_caches_by_kind():
    info = {
        "attention_caches": [
            {"kind": "full_attention", "layers": [3, 7], "elements_per_token": 10, "window": None},
            {"kind": "sliding_attention", "layers": [1], "elements_per_token": 10, "window": 8},
        ]
    }
    assert attention_cache_bytes(info, 100, 2, "bfloat16") == 2 * 2 * (2 * 10 * 100 + 1 * 10 * 8)
    assert attention_cache_bytes(info, 4, 1, torch.float32) == 4 * (2 * 10 * 4 + 10 * 4)
    legacy = {"full_attention_layers": [2], "num_key_value_heads": 2, "head_dim": 16}  # plans saved before
    assert attention_cache_bytes(legacy, 10, 1, "float32") == 4 * 2 * 2 * 16 * 10
