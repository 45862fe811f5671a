"""Architecture adapters: the only code that knows a model family's module names and weight layout.

A registry maps a config's `model_type` to its adapter; `get_adapter(model)` resolves composite configs (Qwen3.5
vision-language checkpoints) to their text model first.
"""

from __future__ import annotations

from .base import (
    AdapterError,
    LinearAttentionAdapter,
    LinearLayerInfo,
    adapter_class_for_config,
    get_adapter,
    register_adapter,
    supported_model_types,
)
from .qwen3_5 import Qwen3_5Adapter
from .qwen3_next import Qwen3NextAdapter

__all__ = [
    "AdapterError",
    "LinearAttentionAdapter",
    "LinearLayerInfo",
    "Qwen3NextAdapter",
    "Qwen3_5Adapter",
    "adapter_class_for_config",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]
