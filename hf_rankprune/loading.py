"""Resolving and loading the model a command works on (a local folder, a Hub id, or the embedded demo model)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .arch import adapter_class_for_config
from .checkpoint import (
    CheckpointError,
    auto_class_for_config,
    checkpoint_tensors,
    describe_report,
    load_report,
    report_from_loading_info,
)
from .errors import ModelLoadError  # noqa: F401 (re-exported)

DEMO_MODEL_PATH = Path(__file__).parent / "assets" / "demo_model"
DEMO_MODEL_NAME = "hf_rankprune demo model (hf_rankprune/assets/demo_model)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _CpuKernelNotice:
    """A logging filter: drops transformers' "install `flash-linear-attention` / `causal_conv1d` for the optimized
    kernel" notices on machines without CUDA, where those GPU-only kernels cannot run anyway."""

    MARK = "is falling back to its reference PyTorch implementation"

    def filter(self, record) -> bool:
        return self.MARK not in str(record.getMessage()) or torch.cuda.is_available()


def quiet_gpu_kernel_notices_on_cpu() -> None:
    """Install `_CpuKernelNotice` on transformers' kernel logger (once)."""
    import logging

    logger = logging.getLogger("transformers.integrations.hub_kernels")
    if not any(isinstance(f, _CpuKernelNotice) for f in logger.filters):
        logger.addFilter(_CpuKernelNotice())



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


def check_device_map(device_map: str | dict | None) -> None:
    """Refuse a device map that names an accelerator this machine does not have (before any weight is read)."""
    names = device_map.values() if isinstance(device_map, dict) else [device_map]
    for name in names:
        if not isinstance(name, str) or name in ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "disk"):
            continue
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise ModelLoadError(f"device_map {str(name)[:100]!r} is not a device: use 'auto', 'cpu' or 'cuda:N'.") from error
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ModelLoadError(
                    f"device_map {name!r}: this machine has no CUDA device; use 'cpu' (or leave --device-map out)."
                )
            if (device.index or 0) >= count:
                raise ModelLoadError(
                    f"device_map {name!r}: this machine has {count} CUDA device(s). Use 'auto', 'cpu' or 'cuda:N' "
                    f"with N < {count}."
                )


def load_model_and_tokenizer(model_path: str, device_map: str | dict | None = None, dtype: str | None = None):
    """Load the whole model (vision-language checkpoints with their vision tower) and its tokenizer.

    The architecture, the device map and the weight files' headers are checked before any weight is read; a model
    whose weights do not match its config (missing, unexpected or re-shaped tensors, which transformers would fill
    with random values) is refused.
    """
    from transformers import AutoTokenizer

    config = load_config(model_path)
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} is not supported: choose one of {sorted(DTYPES)}.")
    check_device_map(device_map)
    if Path(model_path).is_dir():
        try:
            checkpoint_tensors(model_path)
        except CheckpointError as error:
            raise ModelLoadError(str(error)) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load the tokenizer of {model_path!r}: {error}") from error
    auto_class = auto_class_for_config(config)
    try:
        model, info = auto_class.from_pretrained(
            model_path, device_map=device_map, dtype=DTYPES[dtype] if dtype else "auto", output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as error:
        problems = _header_load_problems(model_path)  # re-shaped weights raise: name them
        if problems:
            raise _unclean_load_error(model_path, problems) from error
        raise ModelLoadError(f"Cannot load the model weights of {model_path!r}: {error}") from error
    problems = describe_report(report_from_loading_info(info))
    if problems:
        raise _unclean_load_error(model_path, problems)
    return model.eval(), tokenizer


def _unclean_load_error(model_path: str, problems: str) -> ModelLoadError:
    return ModelLoadError(
        f"{model_path} does not load cleanly: its weights do not match its config.json ({problems}); transformers "
        "would fill the gaps with random values. Fix or re-download the checkpoint."
    )


def _header_load_problems(model_path: str) -> str:
    """What a local checkpoint's load report would say (from its headers), or '' when it cannot tell."""
    if not Path(model_path).is_dir():
        return ""
    try:
        return describe_report(load_report(model_path))
    except Exception:  # the header check is a diagnosis of an error already being raised: never mask it
        return ""
