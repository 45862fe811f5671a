"""Pruned checkpoints where models are served: vLLM (its CPU build, in its own environment) serves a stock-layout
checkpoint as it is, decodes it like transformers, and holds more sequences in the same cache; ragged checkpoints are
not servable and `prune` says so.

The vLLM environment is built by `make .venv-vllm` (part of `make test`); without it these tests are skipped.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from conftest import save_tiny_model
from transformers import AutoModelForCausalLM

from hf_rankprune.cli import main
from hf_rankprune.integrations.serving import ServingError, generate_with_vllm, vllm_python

pytestmark = pytest.mark.skipif(vllm_python() is None, reason="no vLLM environment (make .venv-vllm)")

# vLLM's CPU Gated DeltaNet kernel needs bf16 and key head dim == value head dim, 64 or 128
SERVABLE = dict(hidden_size=256, head_dim=64, linear_key_head_dim=64, linear_value_head_dim=64)
PROMPT = [5, 17, 42, 99, 7, 250, 3, 61]
STEPS = 12


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"original", "stock", "ragged"}: a tiny Qwen3-Next on disk and two pruned copies of it (3 of 8 heads per layer)."""
    root = tmp_path_factory.mktemp("serving")
    source = save_tiny_model("qwen3_next", root / "original", **SERVABLE)
    folders, printed = {"original": source}, {}
    small = ["--num-samples", "2", "--seq-len", "64", "--quiet", "--ratio", "0.375"]
    for name, flags in {"stock": ["--budget", "per_layer", "--layout", "stock"], "ragged": ["--budget", "global"]}.items():
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["prune", str(source), *small, *flags, "--out", str(root / name)]) == 0
        folders[name], printed[name] = root / name, out.getvalue()
    folders["printed"] = printed
    return folders


def _transformers_agrees(folder, tokens) -> int:
    """Teacher-force vLLM's sequence through transformers (bf16): every token vLLM chose is transformers' choice up to
    bf16 near-ties; returns how many of them are exactly its argmax."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ids = torch.tensor([PROMPT + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(PROMPT) - 1 : -1].float()
    chosen = logits.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    assert torch.all(chosen >= logits.max(dim=1).values - 0.1), (chosen, logits.max(dim=1))
    return int((logits.argmax(dim=1) == torch.tensor(tokens)).sum())


def test_vllm_serves_the_stock_layout_as_it_is(checkpoints):
    config = json.loads((checkpoints["stock"] / "config.json").read_text())
    assert config["model_type"] == "qwen3_next" and config["architectures"] == ["Qwen3NextForCausalLM"]
    original = generate_with_vllm(checkpoints["original"], PROMPT, STEPS)
    pruned = generate_with_vllm(checkpoints["stock"], PROMPT, STEPS)
    assert len(pruned["tokens"]) == STEPS
    assert _transformers_agrees(checkpoints["stock"], pruned["tokens"]) >= STEPS - 2
    # the engine's capacity for concurrent sequences grows with the state cut (37.5% of the linear state here)
    assert original["concurrency"] and pruned["concurrency"] > 1.2 * original["concurrency"], (original, pruned)


def test_ragged_checkpoints_are_not_served_and_prune_says_so(checkpoints):
    with pytest.raises(ServingError, match="custom code|RankPruned"):  # vLLM refuses it before loading weights
        generate_with_vllm(checkpoints["ragged"], PROMPT, 2)
    assert "--budget per_layer --layout stock" in checkpoints["printed"]["ragged"]
    assert "stock layout" in checkpoints["printed"]["stock"]
