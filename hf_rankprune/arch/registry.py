"""The registry of adapters: model type -> adapter, and the ragged-pruned config/model pairs the adapters declare.

`register_adapter` is the one place a family enters the tool: it maps the family's stock model types and the
`*_rankpruned` types of its ragged pairs to the adapter, makes each pair (`hf_rankprune.modeling` factories) and
registers it with transformers' Auto classes and checkpoint conversions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import AutoConfig

from ..checkpoint import auto_class_for_config
from ..errors import AdapterError
from ..modeling import rankpruned_config_class, rankpruned_model_class, register_conversion_mapping

if TYPE_CHECKING:
    from torch import nn

    from .base import LinearAttentionAdapter

_ADAPTERS: dict[str, type[LinearAttentionAdapter]] = {}
# stock model class -> its ragged-pruned model class (config class: `.config_class`); each derives from its stock one
RAGGED_CLASSES: dict[type, type] = {}


def register_adapter(cls: type[LinearAttentionAdapter]) -> type[LinearAttentionAdapter]:
    """Class decorator: make `cls` the adapter of its `model_types` and register its ragged pairs."""
    for stock_model_class in cls.ragged_model_classes:
        config_class = rankpruned_config_class(stock_model_class.config_class)
        model_class = rankpruned_model_class(
            stock_model_class, config_class, cls.layer_attribute, cls.ragged_layer_class()
        )
        _register_with_transformers(config_class, model_class)
        RAGGED_CLASSES[stock_model_class] = model_class
        _claim(config_class.model_type, cls)
    for model_type in cls.model_types:
        _claim(model_type, cls)
    return cls


def _claim(model_type: str, cls: type[LinearAttentionAdapter]) -> None:
    owner = _ADAPTERS.get(model_type)
    if owner is not None and owner.__qualname__ != cls.__qualname__:
        raise AdapterError(f"model type {model_type!r} already has an adapter ({owner.__name__}); {cls.__name__} too.")
    _ADAPTERS[model_type] = cls


def _register_with_transformers(config_class: type, model_class: type) -> None:
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    auto_class_for_config(config_class).register(config_class, model_class, exist_ok=True)
    register_conversion_mapping(config_class)


def ragged_class_of(model: nn.Module) -> type | None:
    """The ragged-pruned class `model` becomes (itself if it is one), or None if its class has none."""
    if type(model) in RAGGED_CLASSES:
        return RAGGED_CLASSES[type(model)]
    return type(model) if type(model) in RAGGED_CLASSES.values() else None


def stock_class_of(model: nn.Module) -> type:
    """The stock class of `model` (itself unless it is a ragged-pruned model)."""
    return type(model).__mro__[1] if type(model) in RAGGED_CLASSES.values() else type(model)


def supported_model_types() -> list[str]:
    """Model types with an adapter: the stock ones and the `*_rankpruned` types of ragged-pruned checkpoints."""
    return sorted(_ADAPTERS)


def recurrence_of(model_type: str) -> str | None:
    """The recurrence of a model type's family, named for people ("Gated DeltaNet"), or None if it has no adapter."""
    adapter = _ADAPTERS.get(model_type)
    return adapter.recurrence if adapter is not None else None


def text_config(config):
    """The config that describes the language model (composite VLM configs carry it as `text_config`)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def adapter_class_for_config(config) -> type[LinearAttentionAdapter]:
    for candidate in (config, text_config(config)):
        model_type = getattr(candidate, "model_type", None)
        if model_type in _ADAPTERS:
            return _ADAPTERS[model_type]
    raise AdapterError(
        f"Unsupported architecture model_type={getattr(config, 'model_type', None)!r}: hf_rankprune supports "
        f"{supported_model_types()}. Adding a family means adding one adapter file in hf_rankprune/arch/ "
        "(docs/adding_a_family.md)."
    )


def get_adapter(model: nn.Module) -> LinearAttentionAdapter:
    """The adapter for `model`; raises `AdapterError` for unsupported models or models without linear layers."""
    config = getattr(model, "config", None)
    if config is None:
        raise AdapterError(f"{type(model).__name__} has no `config`: pass a transformers PreTrainedModel.")
    adapter = adapter_class_for_config(config)(model)
    if not adapter.linear_layers():
        raise AdapterError(
            f"{type(model).__name__} (model_type={config.model_type!r}) has no linear-attention layers "
            f"(layer_types={getattr(text_config(config), 'layer_types', None)}): there is no state to analyse or prune."
        )
    return adapter
