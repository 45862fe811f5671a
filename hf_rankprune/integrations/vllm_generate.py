"""Run by the vLLM virtual environment (`.venv-vllm`, which has no hf_rankprune): serve a checkpoint folder with vLLM
on the CPU, decode greedily and print one JSON line with the tokens and the decode time. The engine's own processes
log its capacity ("Maximum concurrency for N tokens per request: Xx") to the same output; the caller reads it there.

    python vllm_generate.py MODEL_DIR PROMPT_IDS_JSON MAX_TOKENS [--copies N] [--ssm-cache-dtype bfloat16]
"""

import argparse
import json
import os
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB for state + KV cache: the capacity the engine logs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("prompt", type=json.loads)
    parser.add_argument("max_tokens", type=int)
    parser.add_argument("--copies", type=int, default=1, help="decode this many copies of the prompt at once")
    parser.add_argument("--ssm-cache-dtype", default="auto", help="dtype of the linear-attention state")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.folder,
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=1024,
        max_num_seqs=max(4, args.copies),
        seed=0,
        mamba_ssm_cache_dtype=args.ssm_cache_dtype,
    )
    params = SamplingParams(max_tokens=args.max_tokens, min_tokens=args.max_tokens, temperature=0.0)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": args.prompt}] * args.copies, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    result = {
        "tokens": list(outputs[0].outputs[0].token_ids),
        "generated": sum(len(output.outputs[0].token_ids) for output in outputs),
        "seconds": seconds,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":  # vLLM starts engine processes: the entry point must be guarded
    main()
