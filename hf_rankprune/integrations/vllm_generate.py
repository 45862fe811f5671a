"""Run by the vLLM virtual environment (`.venv-vllm`, which has no hf_rankprune): serve a checkpoint folder with vLLM
on the CPU, decode greedily and print one JSON line with the tokens. The engine's own processes log its capacity
("Maximum concurrency for N tokens per request: Xx") to the same output; the caller reads it there.

    python vllm_generate.py MODEL_DIR PROMPT_IDS_JSON MAX_TOKENS
"""

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB for state + KV cache: the capacity the engine logs


def main() -> None:
    from vllm import LLM, SamplingParams

    folder, prompt, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = LLM(model=folder, dtype="bfloat16", enforce_eager=True, max_model_len=1024, max_num_seqs=4, seed=0)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    output = llm.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0]
    print("RESULT " + json.dumps({"tokens": list(output.token_ids)}), flush=True)


if __name__ == "__main__":  # vLLM starts engine processes: the entry point must be guarded
    main()
