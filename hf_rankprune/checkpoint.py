"""What a checkpoint folder holds, read from its safetensors headers alone, and whether `from_pretrained` would load it
cleanly: the input check before any work and the self-check of every saved pruned model.

Reading headers costs nothing on an 80B model: the tensors are never read. The load report comes from transformers'
own loading (`from_pretrained` with a state dict of meta tensors shaped like the checkpoint's, on the meta device), so
every checkpoint conversion it applies (fused MoE experts, key prefixes) is applied here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import torch

from .errors import CheckpointError, SavedCheckpointError  # noqa: F401 (re-exported)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit




def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{tensor name: (shape, dtype)} of one .safetensors file, checked to be whole (data covers every tensor)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file ({size} bytes): re-download or re-save it.")
        (header_bytes,) = struct.unpack("<Q", prefix)
        if header_bytes > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path} has a garbage or truncated safetensors header: re-download or re-save it.")
        try:
            header = json.loads(stream.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} has an unreadable safetensors header ({error}): re-download it.") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a malformed safetensors header: re-download or re-save it.")
    tensors, data_end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            _, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: tensor {name[:200]!r} has a malformed header entry.") from error
        tensors[name] = (shape, dtype)
        data_end = max(data_end, end)
    if 8 + header_bytes + data_end > size:
        raise CheckpointError(
            f"{path} is truncated: its header promises {8 + header_bytes + data_end} bytes, the file has {size}. "
            "Re-download or re-save the model."
        )
    return tensors


def checkpoint_tensors(folder: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{tensor name: (shape, dtype)} over every .safetensors file of `folder` (headers only)."""
    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(read_safetensors_header(path))
    return tensors


def auto_class_for_config(config):
    """The Auto class that loads the model of `config` (a config or a config class) whole: vision-language configs
    keep their vision tower."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    config_class = config if isinstance(config, type) else type(config)
    if "vision_config" in config_class.sub_configs:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def load_report(folder: str | os.PathLike) -> dict[str, list[str]]:
    """{"missing", "unexpected", "mismatched": sorted weight names} that `from_pretrained(folder)` would report,
    computed on the meta device from the safetensors headers (no tensor is read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    auto_class = auto_class_for_config(config)
    model_class = auto_class._model_mapping[type(config)]
    state_dict = {
        name: torch.empty(shape, dtype=dtype, device="meta") for name, (shape, dtype) in checkpoint_tensors(folder).items()
    }
    with _quiet_transformers():
        _, info = model_class.from_pretrained(
            None,
            config=config,
            state_dict=state_dict,
            device_map="meta",
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # report re-shaped weights instead of raising
        )
    return report_from_loading_info(info)


def report_from_loading_info(info: dict) -> dict[str, list[str]]:
    """The weight names of `from_pretrained(..., output_loading_info=True)`'s report, by kind."""
    return {
        "missing": sorted(info["missing_keys"]),
        "unexpected": sorted(info["unexpected_keys"]),
        "mismatched": sorted(str(key[0]) if isinstance(key, tuple) else str(key) for key in info["mismatched_keys"]),
    }


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bar or load report on the console while transformers loads on the meta device."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def describe_report(report: dict[str, list[str]], limit: int = 5) -> str:
    """'3 missing (a, b, c), 1 unexpected (d)': the non-empty parts of a load report, a few names each."""
    parts = []
    for kind, names in report.items():
        if names:
            shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
            parts.append(f"{len(names)} {kind} ({shown})")
    return "; ".join(parts)


def check_saved_checkpoint(folder: str | os.PathLike) -> None:
    """Raise `SavedCheckpointError` unless the checkpoint just written to `folder` reloads with a clean load report."""
    problems = describe_report(load_report(folder))
    if problems:
        raise SavedCheckpointError(
            f"internal error: the saved checkpoint would not reload cleanly: {problems}. Nothing was written; "
            "please report this with the model's config.json."
        )
