"""Resolving and loading the model a command works on (a local folder, a Hub id, or the embedded demo model)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .arch import adapter_class_for_config

DEMO_MODEL_PATH = Path(__file__).parent / "assets" / "demo_model"
DEMO_MODEL_NAME = "hf_rankprune demo model (hf_rankprune/assets/demo_model)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """The model cannot be found or is not a model this tool handles."""


def resolve_model_path(model: str | os.PathLike | None) -> str:
    """A local model folder or a Hub id; None means the embedded demo model. Checks local folders up front."""
    if model is None:
        if not (DEMO_MODEL_PATH / "config.json").is_file():
            raise ModelLoadError(
                f"No MODEL given and the embedded demo model is missing at {DEMO_MODEL_PATH}: pass a model folder "
                "or Hub id, or build the demo model with `python scripts/train_demo_model.py`."
            )
        return str(DEMO_MODEL_PATH)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a model folder: it has no config.json.")
        return str(path)
    if path.exists():
        raise ModelLoadError(f"{path} is a file, not a model folder or Hub id.")
    text = str(model)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelLoadError(f"{text} does not exist: give an existing model folder or a Hub id like 'org/name'.")
    return text


def load_config(model_path: str):
    """The model's config, checked to be a supported linear-attention architecture (before loading weights)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load a model config from {model_path!r}: {error}") from error
    adapter_class_for_config(config)
    return config


def load_model_and_tokenizer(model_path: str, device_map: str | dict | None = None, dtype: str | None = None):
    """Load a CausalLM and its tokenizer; the architecture is checked from the config before any weight is read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_config(model_path)
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} is not supported: choose one of {sorted(DTYPES)}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load the tokenizer of {model_path!r}: {error}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path, device_map=device_map, dtype=DTYPES[dtype] if dtype else "auto"
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load the model weights of {model_path!r}: {error}") from error
    return model.eval(), tokenizer
