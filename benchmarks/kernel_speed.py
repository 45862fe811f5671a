"""Benchmark the kernels of pruned layers: the gated delta rule (ragged value->key maps) and Kimi delta attention.

    python benchmarks/kernel_speed.py            # CUDA: Qwen3-Next shapes (H=16 key heads, HV=32 value heads, d=128)
    python benchmarks/kernel_speed.py --tiny     # tiny shapes on CPU, Triton under the interpreter (CI smoke run)
    python benchmarks/kernel_speed.py --ops kda  # only the Kimi delta attention rows (Kimi Linear: 32 heads, d=128)

For each removal ratio (25/39/50% of value heads, removed at random: ragged groups), prefill (chunked) and
decode (one token from a cached state), it prints the time of our Triton kernels, of fla's kernels on q/k
gathered by the map (if fla is importable; the gather is included), of fla on the unpruned layer (HV=32),
and of the torch reference, with ratios and the largest difference between ours and the reference.
The Kimi delta attention rows (op `kda-pre` / `kda-dec`; HV = heads kept, as KDA prunes q/k/v heads
together) compare our KDA kernels with fla's `chunk_kda` / `fused_recurrent_kda` the same way.
Without CUDA the run is automatically --tiny (times there measure the interpreter, not the kernels).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIOS = (0.25, 0.39, 0.50)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    p.add_argument("--prefill", default=None, help="B:T pairs, e.g. 1:2048,4:4096,8:8192")
    p.add_argument("--decode", default=None, help="batch sizes for decode, e.g. 1,8,32,64")
    p.add_argument("--ratios", default=None, help="fractions of value heads removed, e.g. 0.25,0.39,0.5")
    p.add_argument("--no-torch", action="store_true", help="skip the torch reference (slow at long T)")
    p.add_argument("--ops", default="gdn,kda", help="kernels to time: gdn (gated delta rule), kda, or both")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def ragged_map(num_k_heads: int, num_v_heads: int, ratio: float, seed: int) -> torch.Tensor:
    """value->key map after removing round(ratio * HV) value heads at random (key heads left empty dropped)."""
    gen = torch.Generator().manual_seed(seed)
    consecutive = torch.arange(num_v_heads) // (num_v_heads // num_k_heads)
    n_keep = num_v_heads - round(ratio * num_v_heads)
    kept = torch.randperm(num_v_heads, generator=gen)[:n_keep].sort().values
    used = consecutive[kept]
    remap = {int(h): i for i, h in enumerate(sorted(set(used.tolist())))}
    return torch.tensor([remap[int(h)] for h in used])


def make_inputs(B, T, H, HV, D, dtype, device, seed, with_state):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, HV, D)
    g = torch.nn.functional.logsigmoid(rnd(B, T, HV).float() + 3).to(dtype)
    beta = torch.rand(B, T, HV, generator=gen).to(device=device, dtype=dtype)
    h0 = (torch.randn(B, HV, D, D, generator=gen) * 0.1).to(device) if with_state else None
    return q, k, v, g, beta, h0


def make_kda_inputs(B, T, H, D, dtype, device, seed, with_state):
    """KDA inputs: q/k/v with the same H heads, a per-key-channel log decay g [B, T, H, D]."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    g = torch.nn.functional.logsigmoid(rnd(B, T, H, D).float() + 3).to(dtype)
    beta = torch.rand(B, T, H, generator=gen).to(device=device, dtype=dtype)
    h0 = (torch.randn(B, H, D, D, generator=gen) * 0.1).to(device) if with_state else None
    return q, k, v, g, beta, h0


def timer(device):
    if device.type == "cuda":
        import triton.testing

        def bench(fn):
            return triton.testing.do_bench(fn, warmup=5, rep=50)
    else:
        def bench(fn):
            fn()  # one untimed call (the interpreter caches nothing, but imports and allocations warm up)
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
    return bench


def load_fla():
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception:  # fla absent or unusable
        return None
    return chunk_gated_delta_rule, fused_recurrent_gated_delta_rule


def load_fla_kda():
    try:
        from fla.ops.kda import chunk_kda, fused_recurrent_kda
    except Exception:  # fla absent, too old for KDA, or unusable
        return None
    return chunk_kda, fused_recurrent_kda


def measure(bench, ours, reference=None, fla=None, fla_full=None):
    """Times (ms) of `ours` (Triton), `fla` (pruned layer), `fla_full` (unpruned layer) and `reference` (torch),
    each a call without arguments (None: not timed), and max|ours - reference| over the output."""
    with torch.no_grad():
        o, _ = ours()
        t_ours = bench(ours)
        t_torch = diff = None
        if reference is not None:
            o_ref, _ = reference()
            diff = (o.float() - o_ref.float()).abs().max().item()
            t_torch = bench(reference)
        t_fla = None if fla is None else bench(fla)
        t_full = None if fla_full is None else bench(fla_full)
    return t_ours, t_fla, t_full, t_torch, diff


def print_row(op, ratio, B, T, heads, t_ours, t_fla, t_full, t_torch, diff):
    ratio_fla = None if t_fla is None else t_fla / t_ours
    ratio_torch = None if t_torch is None else t_torch / t_ours
    print(f"{op:8} {ratio:>7.0%} {B:>3} {T:>6} {heads:>3} {fmt(t_ours):>9} {fmt(t_fla):>9} "
          f"{fmt(t_full):>9} {fmt(t_torch):>9} {fmt(ratio_fla, '.2f'):>8} {fmt(ratio_torch, '.2f'):>10} "
          f"{fmt(diff, '.2e'):>10}")


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    if tiny:
        # triton reads TRITON_INTERPRET when it is imported: set it before anything imports triton
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared CPU
        device, dtype = torch.device("cpu"), torch.float32
        H, HV, D = 2, 4, 16
        kda_heads = 4
        prefill = [(1, 70)]
        decode = [2]
        ratios = (0.25, 0.5)
    else:
        device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
        H, HV, D = 16, 32, 128
        kda_heads = 32  # Kimi Linear's linear-attention heads (head dim 128)
        prefill = [(1, 2048), (1, 8192), (4, 4096), (8, 2048), (8, 8192)]
        decode = [1, 8, 32, 64]
        ratios = RATIOS
    if args.prefill:
        prefill = [tuple(int(x) for x in pair.split(":")) for pair in args.prefill.split(",")]
    if args.decode:
        decode = [int(x) for x in args.decode.split(",")]
    if args.ratios:
        ratios = tuple(float(x) for x in args.ratios.split(","))

    ops = {x.strip() for x in args.ops.split(",") if x.strip()}
    if not ops or ops - {"gdn", "kda"}:
        raise SystemExit(f"--ops takes gdn, kda or both, got {args.ops!r}")

    from hf_rankprune.kernels import (
        chunk_gated_delta_rule,
        chunk_kimi_delta_attention,
        fused_recurrent_gated_delta_rule,
        fused_recurrent_kimi_delta_attention,
    )

    # fla's kernels are autotuned: not runnable under the interpreter as shipped
    fla = None if tiny or "gdn" not in ops else load_fla()
    fla_kda = None if tiny or "kda" not in ops else load_fla_kda()
    bench = timer(device)
    print(f"device={device} dtype={dtype} H={H} HV={HV} d={D} kda heads={kda_heads} fla={'yes' if fla else 'no'} "
          f"fla kda={'yes' if fla_kda else 'no'}"
          f"{' (tiny: Triton interpreter, times are not kernel times)' if tiny else ''}")
    header = (f"{'op':8} {'removed':>7} {'B':>3} {'T':>6} {'HV':>3} {'ours ms':>9} {'fla ms':>9} {'fla full':>9} "
              f"{'torch ms':>9} {'fla/ours':>8} {'torch/ours':>10} {'max|diff|':>10}")
    print(header)
    print("-" * len(header))
    for op in ("prefill", "decode") if "gdn" in ops else ():
        shapes = prefill if op == "prefill" else [(b, 1) for b in decode]
        ours_fn = chunk_gated_delta_rule if op == "prefill" else fused_recurrent_gated_delta_rule
        fla_fn = None if fla is None else fla[0 if op == "prefill" else 1]
        for ratio in ratios:
            v2k = ragged_map(H, HV, ratio, args.seed).to(device)
            h_used, hv_kept = int(v2k.max()) + 1, v2k.numel()
            for B, T in shapes:
                q, k, v, g, beta, h0 = make_inputs(B, T, h_used, hv_kept, D, dtype, device, args.seed, op == "decode")
                kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
                calls = dict(
                    ours=lambda: ours_fn(q, k, v, g, beta, v2k, **kw, backend="triton"),  # noqa: B023
                    reference=lambda: ours_fn(q, k, v, g, beta, v2k, **kw, backend="torch"),  # noqa: B023
                )
                if args.no_torch:
                    calls.pop("reference")
                if fla_fn is not None:
                    calls["fla"] = lambda: fla_fn(q[:, :, v2k], k[:, :, v2k], v, g, beta, **kw)  # noqa: B023
                    qf, kf, vf, gf, bf, h0f = make_inputs(B, T, H, HV, D, dtype, device, args.seed, op == "decode")
                    kwf = dict(kw, initial_state=h0f)
                    calls["fla_full"] = lambda: fla_fn(qf, kf, vf, gf, bf, **kwf)  # noqa: B023
                print_row(op, ratio, B, T, hv_kept, *measure(bench, **calls))
    for op in ("prefill", "decode") if "kda" in ops else ():
        shapes = prefill if op == "prefill" else [(b, 1) for b in decode]
        ours_fn = chunk_kimi_delta_attention if op == "prefill" else fused_recurrent_kimi_delta_attention
        fla_fn = None if fla_kda is None else fla_kda[0 if op == "prefill" else 1]
        for ratio in ratios:
            h_kept = kda_heads - round(ratio * kda_heads)  # KDA removes whole heads (q, k, v together)
            for B, T in shapes:
                q, k, v, g, beta, h0 = make_kda_inputs(B, T, h_kept, D, dtype, device, args.seed, op == "decode")
                kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
                calls = dict(
                    ours=lambda: ours_fn(q, k, v, g, beta, **kw, backend="triton"),  # noqa: B023
                    reference=lambda: ours_fn(q, k, v, g, beta, **kw, backend="torch"),  # noqa: B023
                )
                if args.no_torch:
                    calls.pop("reference")
                if fla_fn is not None:
                    calls["fla"] = lambda: fla_fn(q, k, v, g, beta, **kw)  # noqa: B023
                    qf, kf, vf, gf, bf, h0f = make_kda_inputs(B, T, kda_heads, D, dtype, device, args.seed,
                                                              op == "decode")
                    kwf = dict(kw, initial_state=h0f)
                    calls["fla_full"] = lambda: fla_fn(qf, kf, vf, gf, bf, **kwf)  # noqa: B023
                print_row(f"kda-{op[:3]}", ratio, B, T, h_kept, *measure(bench, **calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
