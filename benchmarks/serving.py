"""Where the saving is served: vLLM's capacity and decode throughput, original vs pruned vs bf16 state vs both.

    HF_RANKPRUNE_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/serving.py [--model DIR] [--ratio 0.375]

Builds (or takes) a Qwen3-Next checkpoint, prunes a copy with `--budget per_layer --layout stock` (the servable
layout: a stock config that vLLM loads as it is), then serves both with vLLM's CPU build, with the linear-attention
state in fp32 and in bf16 (`mamba_ssm_cache_dtype`), all in one run. For each of the four it prints the engine's
reported capacity (sequences of 1,024 tokens that fit in 1 GiB of state + KV cache) and the decode throughput of
`--copies` greedy sequences at once, with ratios to the original in fp32. The default model is a random tiny
Qwen3-Next with 64-dim heads (vLLM's CPU kernel needs 64 or 128): its numbers show the mechanism, not a real model's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import Qwen3NextConfig, Qwen3NextForCausalLM  # noqa: E402

from hf_rankprune.cli import main as cli  # noqa: E402
from hf_rankprune.integrations.serving import generate_with_vllm, vllm_python  # noqa: E402

TINY = dict(
    vocab_size=320,
    hidden_size=256,
    num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=64,
    linear_value_head_dim=64,
    linear_num_key_heads=2,
    linear_num_value_heads=8,
    intermediate_size=256,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=64,
    shared_expert_intermediate_size=64,
    max_position_embeddings=2048,
)


def tiny_checkpoint(folder: Path) -> Path:
    """A random tiny Qwen3-Next with a byte-level tokenizer, saved as a user's folder."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_tokenizer

    torch.manual_seed(0)
    Qwen3NextForCausalLM(Qwen3NextConfig(**TINY)).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a Qwen3-Next / Qwen3.5 text checkpoint folder (default: tiny)")
    parser.add_argument("--ratio", type=float, default=0.375, help="fraction of value heads removed (default 0.375)")
    parser.add_argument("--copies", type=int, default=16, help="sequences decoded at once (default 16)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per sequence (default 64)")
    args = parser.parse_args()
    if vllm_python() is None:
        print("No vLLM environment: run `make vllm` and set HF_RANKPRUNE_VLLM_PYTHON=.venv-vllm/bin/python.")
        return 2
    with tempfile.TemporaryDirectory(prefix="hf_rankprune-serving-") as tmp:
        original = Path(args.model) if args.model else tiny_checkpoint(Path(tmp) / "original")
        pruned = Path(tmp) / "pruned"
        small = ["--num-samples", "4", "--seq-len", "256", "--quiet"]
        code = cli(["prune", str(original), "--budget", "per_layer", "--layout", "stock", "--ratio", str(args.ratio),
                    *small, "--out", str(pruned)])  # fmt: skip
        if code:
            return code
        prompt = list(range(5, 37))
        rows = []
        for name, folder in (("original", original), ("pruned", pruned)):
            for state in ("float32", "bfloat16"):
                result = generate_with_vllm(folder, prompt, args.tokens, copies=args.copies, ssm_cache_dtype=state)
                rows.append((name, state, result["concurrency"], result["generated"] / result["seconds"]))
    base_capacity, base_speed = rows[0][2], rows[0][3]
    print(f"\nvLLM (CPU build), {args.copies} sequences x {args.tokens} tokens, 1 GiB of state + KV cache")
    print("| model | linear state | sequences of 1,024 tokens in 1 GiB | x original fp32 | decode tok/s | x |")
    print("|---|---|---|---|---|---|")
    for name, state, capacity, speed in rows:
        print(f"| {name} | {state} | {capacity:,.1f} | {capacity / base_capacity:.2f} | {speed:,.0f} | "
              f"{speed / base_speed:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
