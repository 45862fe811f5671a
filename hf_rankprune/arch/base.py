"""The adapter contract and the registry; shared machinery of gated-delta-rule families."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar

from torch import nn

_REGISTRY: dict[str, type[LinearAttentionAdapter]] = {}


class AdapterError(ValueError):
    """The model cannot be handled: unsupported architecture or no linear-attention layers."""


@dataclass(frozen=True)
class LinearLayerInfo:
    """One linear-attention layer: its index among the model's decoder layers, its module and head geometry."""

    index: int
    module: nn.Module
    num_key_heads: int
    num_value_heads: int
    key_dim: int
    value_dim: int

    @property
    def rank_cap(self) -> int:
        """Largest possible rank of a head's state, min(d_k, d_v)."""
        return min(self.key_dim, self.value_dim)


def register_adapter(cls: type[LinearAttentionAdapter]) -> type[LinearAttentionAdapter]:
    """Class decorator: make `cls` the adapter of each of its `model_types`."""
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def text_config(config):
    """The config that describes the language model (composite VLM configs carry it as `text_config`)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def adapter_class_for_config(config) -> type[LinearAttentionAdapter]:
    for candidate in (config, text_config(config)):
        model_type = getattr(candidate, "model_type", None)
        if model_type in _REGISTRY:
            return _REGISTRY[model_type]
    raise AdapterError(
        f"Unsupported architecture model_type={getattr(config, 'model_type', None)!r}: hf_rankprune supports "
        f"{supported_model_types()}. Adding a family means adding one adapter file in hf_rankprune/arch/."
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


class LinearAttentionAdapter:
    """Base of all adapters. Subclasses name their model types, their layer classes and their kernel entry points."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = text_config(model.config)

    # -- structure ---------------------------------------------------------------------------------------------
    def layer_classes(self) -> tuple[type[nn.Module], ...]:
        """Module classes that are this family's linear-attention layers."""
        raise NotImplementedError

    def linear_layers(self) -> list[LinearLayerInfo]:
        """Every linear-attention layer of the model, ordered by layer index."""
        classes = self.layer_classes()
        layers = [
            LinearLayerInfo(
                index=module.layer_idx,
                module=module,
                num_key_heads=module.num_k_heads,
                num_value_heads=module.num_v_heads,
                key_dim=module.head_k_dim,
                value_dim=module.head_v_dim,
            )
            for module in self.model.modules()
            if isinstance(module, classes)
        ]
        return sorted(layers, key=lambda layer: layer.index)

    # -- observation -------------------------------------------------------------------------------------------
    def chunk_kernel_sites(self) -> list[tuple[ModuleType, str]]:
        """(module, attribute) pairs through which this family's layers call the chunked gated delta rule."""
        raise NotImplementedError

    @contextlib.contextmanager
    def observe(self, make_wrapper: Callable[[Callable, Callable[[], int | None]], Callable]) -> Iterator[None]:
        """Route every prefill kernel call of the linear layers through `make_wrapper(original, current_layer)`.

        The kernels are module-level functions looked up at call time, so wrapping them observes the exact states
        the model computes without touching its weights or forward code. `current_layer()` tells the wrapper which
        layer is calling (set by forward pre-hooks on the layer modules).
        """
        active: list[int | None] = [None]

        def enter(module, args):
            active[0] = module.layer_idx

        def leave(module, args, output):
            active[0] = None

        handles = []
        patched: list[tuple[ModuleType, str, Callable]] = []
        try:
            for layer in self.linear_layers():
                handles.append(layer.module.register_forward_pre_hook(enter))
                handles.append(layer.module.register_forward_hook(leave))
            for site, name in self.chunk_kernel_sites():
                original = getattr(site, name)
                patched.append((site, name, original))
                setattr(site, name, make_wrapper(original, lambda: active[0]))
            yield
        finally:
            for site, name, original in reversed(patched):
                setattr(site, name, original)
            for handle in handles:
                handle.remove()
