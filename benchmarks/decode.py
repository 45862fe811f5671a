"""Decode throughput and linear-state bytes of original vs pruned models (CPU torch path).

    python benchmarks/decode.py [--tokens 32] [--threads 1] [--shapes tiny real]

For each model shape ("tiny": the test models' 2 key x 8 value heads of 16; "real": Qwen3-Next/Qwen3.5 head shapes,
16 key x 32 value heads of 128, 3 layers, small hidden size) and each fraction of value heads removed (25%, 38.9%,
50%), prunes a copy with a random ragged plan (one global random choice) and with a uniform plan (same count in every
key group), then times cached greedy decoding and reports the recurrent-state bytes (plan.memory) with ratios.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig  # noqa: E402

from hf_rankprune.arch import (
    get_adapter,  # noqa: E402
    model_geometry,
)
from hf_rankprune.plan import PrunePlan  # noqa: E402
from hf_rankprune.surgery import apply_plan  # noqa: E402

SHAPES = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=4,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=8,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
    ),
    "real": dict(
        hidden_size=256,
        num_hidden_layers=3,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
        linear_num_key_heads=16,
        linear_num_value_heads=32,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=512,
    ),
}
FRACTIONS = (0.25, 0.389, 0.5)


def build(shape: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen3_5TextConfig(vocab_size=512, linear_conv_kernel_dim=4, max_position_embeddings=4096, **SHAPES[shape])
    return Qwen3_5ForCausalLM(config).eval()


def random_ragged_plan(model, fraction: float, seed: int = 0) -> PrunePlan:
    layers = get_adapter(model).linear_layers()
    heads = [(info.index, j) for info in layers for j in range(info.num_value_heads)]
    budget = round(fraction * len(heads))
    rng = random.Random(seed)
    rng.shuffle(heads)
    kept = {info.index: set(range(info.num_value_heads)) for info in layers}
    for index, j in heads:
        if budget == 0:
            break
        if len(kept[index]) > 1:
            kept[index].discard(j)
            budget -= 1
    return PrunePlan.from_kept_heads(model_geometry(model), {i: sorted(k) for i, k in kept.items()}, settings={"kind": "random"})


def uniform_plan(model, fraction: float, seed: int = 0) -> PrunePlan:
    """Same counts in every layer and key group: r' value heads in each of nk' kept key groups, nk' * r' closest to
    the target (whole key groups go when fewer heads per group cannot reach it)."""
    rng = random.Random(seed)
    kept = {}
    for info in get_adapter(model).linear_layers():
        ratio = info.num_value_heads // info.num_key_heads
        target = info.num_value_heads * (1 - fraction)
        groups, per_group = min(
            ((g, r) for g in range(1, info.num_key_heads + 1) for r in range(1, ratio + 1)),
            key=lambda pair: (abs(pair[0] * pair[1] - target), -pair[0]),
        )
        kept[info.index] = sorted(
            group * ratio + j
            for group in rng.sample(range(info.num_key_heads), groups)
            for j in rng.sample(range(ratio), per_group)
        )
    return PrunePlan.from_kept_heads(model_geometry(model), kept, settings={"kind": "uniform"})


def decode_tokens_per_second(model, tokens: int, prompt_len: int = 32, repeats: int = 2) -> float:
    prompt = torch.randint(0, 512, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    best = float("inf")
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            prefill = model.generate(prompt, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
            middle = time.perf_counter()
            model.generate(prompt, **kwargs)
            end = time.perf_counter()
            del prefill
            best = min(best, (end - middle) - (middle - start))  # subtract the prefill (+1 token)
    return (tokens - 1) / max(best, 1e-9)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = f"{'shape':6} {'variant':8} {'removed':>8} {'state bytes':>12} {'ratio':>6} {'tok/s':>8} {'speedup':>7}"
    print(header)
    print("-" * len(header))
    for shape in args.shapes:
        original = build(shape)
        state_before = PrunePlan.identity(model_geometry(original)).memory().state_bytes_before
        base = decode_tokens_per_second(original, args.tokens)
        print(f"{shape:6} {'original':8} {'0.0%':>8} {state_before:>12} {1.0:>6.3f} {base:>8.1f} {1.0:>7.2f}")
        for fraction in FRACTIONS:
            for variant, make in (("ragged", random_ragged_plan), ("uniform", uniform_plan)):
                model = copy.deepcopy(original)
                plan = make(model, fraction)
                apply_plan(model, plan)
                after = plan.memory().state_bytes_after
                speed = decode_tokens_per_second(model, args.tokens)
                print(
                    f"{shape:6} {variant:8} {100 * plan.removed_fraction:>7.1f}% {after:>12} "
                    f"{after / state_before:>6.3f} {speed:>8.1f} {speed / base:>7.2f}"
                )


if __name__ == "__main__":
    main()
