"""Tiny real models of each supported family, built from config (no weights can be downloaded here)."""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from families import COMMON, FAMILIES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


def build_tiny_model(family: str, seed: int = 0, vision: bool = False, **overrides) -> torch.nn.Module:
    """A randomly initialised fp32 model of `family` (tests/families/) in eval mode: a CausalLM, or with `vision`
    (families with a vision-language form) the vision-language model of the public checkpoints; a family without a
    CausalLM form always gives its vision-language model."""
    torch.manual_seed(seed)
    spec = FAMILIES[family]
    vision = vision or not spec.causal_lm
    if vision and not spec.vision:
        raise ValueError(f"{family} has no vision-language form")
    model = spec.build(dict(COMMON, **overrides), vision)
    _spread_gates(model)
    return model.eval()


def _spread_gates(model: torch.nn.Module) -> None:
    """Give heads distinct decay rates (as trained models have), so their state ranks differ."""
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if name.endswith("A_log"):
            with torch.no_grad():
                spread = torch.linspace(-6.0, 1.5, param.numel())[torch.randperm(param.numel(), generator=generator)]
                param.copy_(spread.reshape(param.shape))


@pytest.fixture
def one_torch_thread():
    """Two shared cores: one torch thread is many times faster than two competing ones on tiny forwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=sorted(FAMILIES))
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
        vision = vision or not FAMILIES[family].causal_lm
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
