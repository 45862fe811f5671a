"""Architecture adapters: the only code that knows a model family's module names, weight layout and caches.

Each family is one file here, registered with `@register_adapter` (`registry.py`); `base.py` is the contract and
`gated_deltanet.py` the machinery the gated-delta-rule families share. `get_adapter(model)` resolves composite configs
(vision-language checkpoints) to their language model first. Importing this package registers every family, with its
ragged-pruned model types, in transformers' Auto classes.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import AdapterError
from .base import LinearAttentionAdapter, LinearLayerInfo
from .registry import adapter_class_for_config, get_adapter, register_adapter, supported_model_types

_SHARED = {"base", "registry", "observation", "gated_deltanet", "kimi_delta", "mamba2_ssd"}
for _module in pkgutil.iter_modules(__path__):  # one file per family: adding a family touches no other file
    if _module.name not in _SHARED:
        importlib.import_module(f"{__name__}.{_module.name}")


def model_geometry(model):
    """The `ModelGeometry` plans are built from (`PrunePlan.from_kept_heads(model_geometry(model), ...)`)."""
    return get_adapter(model).geometry()


__all__ = [
    "AdapterError",
    "LinearAttentionAdapter",
    "LinearLayerInfo",
    "adapter_class_for_config",
    "get_adapter",
    "model_geometry",
    "register_adapter",
    "supported_model_types",
]
