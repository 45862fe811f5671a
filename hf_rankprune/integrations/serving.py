"""Serving pruned checkpoints with vLLM: which layouts it can use, and a check that runs it (`vllm_generate.py`).

vLLM builds every Gated DeltaNet layer from the config's global head counts and pads the state pages of all layers to
one size, so only a stock configuration (a uniform plan, or `layout="stock"`) carries the saving into the server, and
vLLM loads such a checkpoint as it is. A ragged checkpoint (`*_rankpruned` model type) would save little there even
with a plugin (its pages padded to the largest layer), so none is offered: prune with `--budget per_layer --layout
stock` for a servable model.

vLLM pins an older transformers than hf_rankprune, so it lives in a virtual environment of its own (`make
.venv-vllm`); `generate_with_vllm` runs it there in a subprocess, with `$HF_RANKPRUNE_VLLM_PYTHON` as its Python.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from ..errors import ServingError  # noqa: F401 (re-exported)

VLLM_PYTHON_ENV = "HF_RANKPRUNE_VLLM_PYTHON"
_SCRIPT = Path(__file__).with_name("vllm_generate.py")
_CAPACITY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.,]+)x")



def vllm_python() -> str | None:
    """The Python of the vLLM environment (`$HF_RANKPRUNE_VLLM_PYTHON`), or None when it is not set up."""
    python = os.environ.get(VLLM_PYTHON_ENV)
    return python if python and Path(python).is_file() else None


def layout_summary(plan) -> str:
    """Which layout a pruned checkpoint has, what loads it, and (ragged) how to get a servable one."""
    if plan.loads_in_stock:
        first = plan.layers[0]
        replicas, parameters = plan.num_replicated_key_heads, plan.replicated_parameters
        extra = ""
        if replicas:
            cost = f", {parameters:,} q/k projection weights" if parameters else ""
            extra = f", {replicas} key heads replicated to keep groups equal{cost} and their convolution state"
        return (
            f"stock layout ({first.num_kept_value_heads} value / {first.num_kept_key_heads} key heads in every "
            f"layer{extra}): stock transformers and serving engines (vLLM) load it as it is."
        )
    return (
        "ragged layout (head counts or key groups differ between layers): loads with hf_rankprune installed or "
        "trust_remote_code=True; serving engines cannot use it. For a servable model prune with --budget per_layer "
        "--layout stock."
    )


def generate_with_vllm(folder: str | os.PathLike, prompt_ids: list[int], max_tokens: int, *, copies: int = 1,
                       ssm_cache_dtype: str = "auto", python: str | None = None, kv_cache_gib: int = 1,
                       timeout: float = 600) -> dict:  # fmt: skip
    """Serve `folder` with vLLM on the CPU (bf16 weights, its own environment) and decode `copies` copies of
    `prompt_ids` greedily, `max_tokens` each; `ssm_cache_dtype="bfloat16"` keeps the linear-attention state in bf16.

    Returns {"tokens": the first copy's ids, "generated": tokens decoded in all, "seconds": decode wall time,
    "concurrency": the engine's reported sequences of `tokens_per_request` tokens that fit in `kv_cache_gib` GiB of
    state + KV cache, "tokens_per_request": ...}.
    """
    python = python or vllm_python()
    if python is None:
        raise ServingError(f"No vLLM environment: set {VLLM_PYTHON_ENV} to its python (`make .venv-vllm` builds one).")
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib), TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [python, str(_SCRIPT), os.fspath(folder), json.dumps(list(prompt_ids)), str(int(max_tokens)),
         "--copies", str(int(copies)), "--ssm-cache-dtype", ssm_cache_dtype],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=os.fspath(folder),
    )
    output = result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise ServingError(f"vLLM failed on {folder} (exit {result.returncode}): {output[-2000:]}")
    values = json.loads(lines[-1][len("RESULT ") :])
    match = _CAPACITY.search(output)
    values["tokens_per_request"] = int(match.group(1).replace(",", "")) if match else None
    values["concurrency"] = float(match.group(2).replace(",", "")) if match else None
    return values
