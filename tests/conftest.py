"""Tiny real models of each supported family, built from config (no weights can be downloaded here)."""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=8,
    layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
    max_position_embeddings=4096,
)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)


# A tiny vision tower: the public Qwen3.5 checkpoints are vision-language models (`*ForConditionalGeneration`)
VISION = dict(
    depth=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=COMMON["hidden_size"],
    patch_size=4,
    temporal_patch_size=2,
    spatial_merge_size=2,
    num_position_embeddings=16,
)
VISION_TOKENS = dict(image_token_id=310, video_token_id=311, vision_start_token_id=312, vision_end_token_id=313)


def build_tiny_model(family: str, seed: int = 0, vision: bool = False, **overrides) -> torch.nn.Module:
    """A randomly initialised fp32 model of `family` ("qwen3_next", "qwen3_5", "qwen3_5_moe") in eval mode: a CausalLM,
    or with `vision` (Qwen3.5 families) the vision-language model of the public checkpoints."""
    torch.manual_seed(seed)
    values = dict(COMMON, **overrides)
    if vision and family not in ("qwen3_5", "qwen3_5_moe"):
        raise ValueError(f"{family} has no vision-language form")
    if family == "qwen3_next":
        config = Qwen3NextConfig(intermediate_size=128, **MOE, **values)
        model = Qwen3NextForCausalLM(config)
    elif family == "qwen3_5" and vision:
        text = Qwen3_5TextConfig(intermediate_size=128, **values)
        model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=VISION, **VISION_TOKENS))
    elif family == "qwen3_5":
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(intermediate_size=128, **values))
    elif family == "qwen3_5_moe" and vision:
        text = Qwen3_5MoeTextConfig(**MOE, **values)
        config = Qwen3_5MoeConfig(text_config=text, vision_config=VISION, **VISION_TOKENS)
        model = Qwen3_5MoeForConditionalGeneration(config)
    elif family == "qwen3_5_moe":
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**MOE, **values))
    else:
        raise ValueError(family)
    _spread_gates(model)
    return model.eval()


def _spread_gates(model: torch.nn.Module) -> None:
    """Give heads distinct decay rates (as trained models have), so their state ranks differ."""
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if name.endswith("A_log"):
            with torch.no_grad():
                param.copy_(torch.linspace(-6.0, 1.5, param.numel())[torch.randperm(param.numel(), generator=generator)])


FAMILIES = ["qwen3_next", "qwen3_5", "qwen3_5_moe"]


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


EOS = "<|endoftext|>"


def build_tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on Python's help topics (300 tokens fit the tiny models' 320-token vocab)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([topics[key] for key in sorted(topics)[:30]], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS)


def save_tiny_model(family: str, path: Path, vision: bool = False, **overrides) -> Path:
    """Save a tiny model of `family` with a tokenizer into `path`, as a user's model folder looks."""
    build_tiny_model(family, vision=vision, **overrides).save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def load_tiny_checkpoint(tmp_path_factory):
    """`load(family, vision=False)`: a fresh model loaded, as users do, from a tiny checkpoint saved on disk once per
    session (loaded models carry transformers' checkpoint conversion, in-memory ones do not)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("tiny_checkpoints")

    def load(family: str, vision: bool = False) -> torch.nn.Module:
        folder = root / f"{family}{'_vl' if vision else ''}"
        if not folder.exists():
            save_tiny_model(family, folder, vision=vision)
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        return auto.from_pretrained(folder, dtype=torch.float32).eval()

    return load


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Qwen3.5 model folder with its tokenizer, shared by the command-line tests."""
    return save_tiny_model("qwen3_5", tmp_path_factory.mktemp("tiny_qwen3_5"))


# ------------------------------------------------------------------------------------------------ local Hub


@pytest.fixture
def _isolated_hub_client(tmp_path, monkeypatch):
    """No Xet, no saved or environment token: the test talks only to its own local Hub (`hub` uses this)."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hub(tmp_path, _isolated_hub_client):
    """A local Hub (tests/hub_server.py) on a free port, storing repos under tmp_path/hub; stopped after the test."""
    from hub_server import LocalHub

    with LocalHub(tmp_path / "hub") as server:
        yield server
