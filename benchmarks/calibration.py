"""Calibration overhead and memory: `python benchmarks/calibration.py [--quick]`.

Prints, measured side by side in one run, calibration time divided by plain forward time on the same batches
(default grid: every 64 tokens plus the end), for a tiny model and for a model with real head shapes (32 value heads,
16 key heads, d_k = d_v = 128). Then the peak resident memory of calibrating 8 vs 64 samples, each in a fresh process,
which must not grow with the number of samples.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

from hf_rankprune.calibrate import calibrate
from hf_rankprune.config import RankPruneConfig

SHAPES = {
    "tiny (8 heads, d=16)": dict(hidden_size=64, intermediate_size=128, linear_num_key_heads=2,
                                 linear_num_value_heads=8, linear_key_head_dim=16, linear_value_head_dim=16,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "real heads (32 heads, d=128)": dict(hidden_size=1024, intermediate_size=2048, linear_num_key_heads=16,
                                         linear_num_value_heads=32, linear_key_head_dim=128,
                                         linear_value_head_dim=128, num_attention_heads=8, num_key_value_heads=2,
                                         head_dim=128),
}  # fmt: skip


def build(shape: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen3_5TextConfig(
        vocab_size=1024,
        num_hidden_layers=3,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
        **SHAPES[shape],
    )
    return Qwen3_5ForCausalLM(config).eval()


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(shape: str, seq_len: int, num_samples: int, repeats: int) -> tuple[float, float]:
    """(plain forward seconds, calibration seconds) on the same samples, medians of `repeats`."""
    model = build(shape)
    ids = torch.randint(0, 1024, (num_samples, seq_len), generator=torch.Generator().manual_seed(0))
    config = RankPruneConfig(seq_len=seq_len, num_samples=num_samples)

    @torch.no_grad()
    def forward():
        for row in range(num_samples):
            model(input_ids=ids[row : row + 1], use_cache=False)

    def calibration():
        calibrate(model, ids, config, progress=False)

    forward()  # warm up both paths once
    calibration()
    return median_time(forward, repeats), median_time(calibration, repeats)


def overhead_table(seq_len: int, num_samples: int, repeats: int) -> None:
    print(f"Calibration time / forward time, {num_samples} samples x {seq_len} tokens, grid every 64 + end "
          f"({torch.get_num_threads()} threads, median of {repeats})")  # fmt: skip
    print("| model | forward s | calibration s | ratio |\n|---|---|---|---|")
    for shape in SHAPES:
        plain, calibrated = measure(shape, seq_len, num_samples, repeats)
        print(f"| {shape} | {plain:.3f} | {calibrated:.3f} | {calibrated / plain:.2f}x |")


def peak_memory_child(shape: str, num_samples: int, seq_len: int) -> None:
    model = build(shape)
    ids = torch.randint(0, 1024, (num_samples, seq_len), generator=torch.Generator().manual_seed(0))
    calibrate(model, ids, RankPruneConfig(seq_len=seq_len, num_samples=num_samples), progress=False)
    print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory_table(seq_len: int) -> None:
    shape = "real heads (32 heads, d=128)"
    print(f"\nPeak resident memory of one calibration process ({shape}, {seq_len} tokens per sample)")
    print("| samples | peak RSS MB |\n|---|---|")
    for num_samples in (8, 64):
        output = subprocess.run(
            [sys.executable, __file__, "--child", shape, str(num_samples), str(seq_len)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        print(f"| {num_samples} | {json.loads(output.splitlines()[-1])['max_rss_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences and few samples (CI smoke run)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    if args.quick:
        overhead_table(seq_len=256, num_samples=2, repeats=1)
    else:
        overhead_table(seq_len=2048, num_samples=2, repeats=3)
        memory_table(seq_len=256)


if __name__ == "__main__":
    main()
