"""The adapter contract and the registry; shared machinery of gated-delta-rule families."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..errors import AdapterError  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from ..plan import PrunePlan

_REGISTRY: dict[str, type[LinearAttentionAdapter]] = {}



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
            from ..modeling import modeling_rankpruned  # pruned layers of every family call the package kernels

            for site, name in [*self.chunk_kernel_sites(), (modeling_rankpruned, "chunk_gated_delta_rule")]:
                original = getattr(site, name)
                patched.append((site, name, original))
                setattr(site, name, make_wrapper(original, lambda: active[0]))
            yield
        finally:
            for site, name, original in reversed(patched):
                setattr(site, name, original)
            for handle in handles:
                handle.remove()

    # -- head outputs and gates (head-importance scores, hf_rankprune.output_scores) ----------------------------
    def head_output_modules(self) -> list[tuple[LinearLayerInfo, nn.Module]]:
        """Per linear layer (`linear_layers()` order), the module whose input is the layer's head outputs,
        [..., num_value_heads * value_dim] with value head h in channels [h * value_dim, (h + 1) * value_dim): the
        output projection. A forward pre-hook on it that scales a head's slice masks that head; zero removes the
        head's contribution exactly (heads are computed independently and the gated norm is per head).
        Gated-delta-rule layers (stock, and RankPrunedGatedDeltaNet) call it `out_proj`; a family that differs
        overrides this."""
        return [(layer, layer.module.out_proj) for layer in self.linear_layers()]

    def gate_log_decay(self) -> list[torch.Tensor]:
        """Per linear layer, per value head, the log of the state's per-token decay at a zero gate input:
        g = -exp(A_log) * softplus(dt_bias) (the gated delta rule's g = -exp(A_log) * softplus(a + dt_bias) with
        the input-dependent `a` at 0); float64 on the CPU. exp(g) is the fraction of the state kept per token."""
        decays = []
        for layer in self.linear_layers():
            weights = self.layer_weights(layer.index)
            a_log = weights["A_log"].detach().to("cpu", torch.float64)
            dt_bias = weights["dt_bias"].detach().to("cpu", torch.float64)
            decays.append(-a_log.exp() * torch.nn.functional.softplus(dt_bias))
        return decays

    # -- surgery -----------------------------------------------------------------------------------------------
    # Canonical per-layer weights (family-neutral, heads on the leading axis), built by `_stock_weights` and
    # consumed by `_stock_state`, the family-specific halves:
    #   q, k: [nk, dk, H]; v, z: [nv, dv, H]; b, a: [nv, H]; conv_q, conv_k: [nk, dk, 1, C]; conv_v: [nv, dv, 1, C];
    #   A_log, dt_bias: [nv]; norm: [dv]; out: [H, nv, dv]; value_to_key: [nv] (long, key head of each value head).

    def _stock_weights(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Canonical weights of a stock layer `module` from its (materialised) `tensors` by name."""
        raise NotImplementedError

    def _stock_state(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict of a stock layer holding canonical `weights` (consecutive equal groups)."""
        raise NotImplementedError

    def _stock_layer_class(self) -> type[nn.Module]:
        """The stock linear-attention class of this model (what uniform plans rebuild layers as)."""
        raise NotImplementedError

    def layer_weights(self, layer_index: int) -> dict[str, torch.Tensor]:
        """Canonical weights of linear layer `layer_index` (offloaded weights are read from accelerate's maps)."""
        module = self._layer_module(layer_index)
        return self._canonical(module, _materialised_tensors(module))

    def _canonical(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(module, _pruned_layer_class()):
            return contiguous_to_canonical(module, tensors)
        return self._stock_weights(module, tensors)

    def _rebuilt_state(self, module: nn.Module, tensors: dict[str, torch.Tensor], layer_plan, target_pruned: bool):
        """(canonical weights of the kept heads, state dict of the rebuilt layer) from `module`'s tensors by name."""
        weights = select_heads(self._canonical(module, tensors), layer_plan)
        return weights, canonical_to_contiguous(weights) if target_pruned else self._stock_state(weights)

    def _carry_layer(self, old: nn.Module, new: nn.Module, prefix: str, layer_plan, target_pruned: bool,
                     tensors: dict[str, torch.Tensor]) -> None:  # fmt: skip
        """Slice `tensors`' entries for `old`'s parameters like its weights, re-keyed to `new`'s parameters."""
        names = [name for name, _ in old.named_parameters()]
        carried = {name: tensors.pop(f"{prefix}.{name}", None) for name in names}
        if any(value is None for value in carried.values()):
            return
        _, state = self._rebuilt_state(old, {**dict(old.named_buffers()), **carried}, layer_plan, target_pruned)
        for name, _ in new.named_parameters():
            tensors[f"{prefix}.{name}"] = state[name].contiguous()

    def _layer_module(self, layer_index: int) -> nn.Module:
        for info in self.linear_layers():
            if info.index == layer_index:
                return info.module
        raise AdapterError(f"layer {layer_index} is not a linear-attention layer of the model.")

    def apply_plan(self, plan, carry: Sequence[dict[str, torch.Tensor]] = ()) -> PrunePlan:
        """Physically remove the heads `plan` drops (indices relative to the current model); returns the plan now
        recorded in the config (relative to the original model).

        A plan whose composition with earlier pruning is uniform keeps the stock module classes and edits
        `linear_num_value_heads` / `linear_num_key_heads`; otherwise pruned layers become `RankPrunedGatedDeltaNet`
        modules with their own head counts and value->key map, and the model/config classes become the registered
        `*_rankpruned` ones. Accelerate hooks are carried over to rebuilt modules.

        `carry`: mappings from parameter name (in `model.named_parameters()`) to a tensor of that parameter's shape,
        e.g. an optimizer's Adam moments. Each is sliced in place exactly as the weights are, so its entries for a
        rebuilt layer end up under the new parameters' names and shapes. A layer with a parameter missing from a
        mapping loses its entries in that mapping.
        """
        from ..plan import CONFIG_KEY, PrunePlan

        plan.validate_for(self)
        previous = PrunePlan.from_config(self.config)
        total = previous.compose(plan) if previous is not None else plan
        uniform = total.is_uniform
        if not uniform:
            check_can_carry_ragged(self.model)
        pruned_class = _pruned_layer_class()
        infos = {info.index: info for info in self.linear_layers()}
        module_names = {id(module): name for name, module in self.model.named_modules()}
        # uniform: the stock config describes every layer; ragged: it keeps the original counts (unpruned layers)
        first = total.layers[0]
        self.config.linear_num_value_heads = first.num_kept_value_heads if uniform else first.num_value_heads
        self.config.linear_num_key_heads = first.num_kept_key_heads if uniform else first.num_key_heads
        for layer_plan in plan.layers:
            info = infos[layer_plan.layer]
            target_pruned = not uniform and total.layer(layer_plan.layer).is_pruned
            if not layer_plan.is_pruned and isinstance(info.module, pruned_class) == target_pruned:
                continue
            old = info.module
            weights, state = self._rebuilt_state(old, _materialised_tensors(old), layer_plan, target_pruned)
            if target_pruned:
                new = _build_on_meta(
                    pruned_class,
                    self.config,
                    layer_plan.layer,
                    weights["q"].shape[0],
                    weights["v"].shape[0],
                    weights["value_to_key"].tolist(),
                )
            else:
                new = _build_on_meta(self._stock_layer_class(), self.config, layer_plan.layer)
            for tensors in carry:
                self._carry_layer(old, new, module_names[id(old)], layer_plan, target_pruned, tensors)
            _load_tensors(new, state, old)
            new.train(old.training)
            _replace_module(self.model, old, new)
        setattr(self.config, CONFIG_KEY, total.to_dict())
        _swap_model_classes(self.model, ragged=not uniform)
        return total


# -- surgery helpers shared by all gated-delta-rule families ---------------------------------------------------------


def _pruned_layer_class() -> type[nn.Module]:
    from ..modeling import RankPrunedGatedDeltaNet

    return RankPrunedGatedDeltaNet


def select_heads(weights: dict[str, torch.Tensor], layer_plan) -> dict[str, torch.Tensor]:
    """Canonical weights restricted to the heads `layer_plan` keeps, with its value->key map."""

    def pick(tensor: torch.Tensor, heads: list[int], dim: int = 0) -> torch.Tensor:
        index = torch.tensor(heads, dtype=torch.long, device=tensor.device)
        return tensor.index_select(dim, index).contiguous()

    keys, values = layer_plan.kept_key_heads, layer_plan.kept_value_heads
    out = {name: pick(weights[name], keys) for name in ("q", "k", "conv_q", "conv_k")}
    out.update({name: pick(weights[name], values) for name in ("v", "z", "b", "a", "conv_v", "A_log", "dt_bias")})
    out["out"] = pick(weights["out"], values, dim=1)
    out["norm"] = weights["norm"]
    out["value_to_key"] = torch.tensor(layer_plan.value_to_key, dtype=torch.long)
    return out


def canonical_to_contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict in the contiguous (Qwen3.5 / RankPrunedGatedDeltaNet) layout."""
    hidden = weights["q"].shape[-1]
    kernel = weights["conv_q"].shape[-1]
    return {
        "in_proj_qkv.weight": torch.cat([weights[n].reshape(-1, hidden) for n in ("q", "k", "v")]),
        "in_proj_z.weight": weights["z"].reshape(-1, hidden),
        "in_proj_b.weight": weights["b"],
        "in_proj_a.weight": weights["a"],
        "conv1d.weight": torch.cat([weights[n].reshape(-1, 1, kernel) for n in ("conv_q", "conv_k", "conv_v")]),
        "A_log": weights["A_log"],
        "dt_bias": weights["dt_bias"],
        "norm.weight": weights["norm"],
        "out_proj.weight": weights["out"].reshape(hidden, -1),
        "value_to_key": weights["value_to_key"],
    }


def contiguous_to_canonical(module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical weights of a layer in the contiguous layout (Qwen3.5 stock, or RankPrunedGatedDeltaNet)."""
    nk, nv, dk, dv = module.num_k_heads, module.num_v_heads, module.head_k_dim, module.head_v_dim
    qkv = tensors["in_proj_qkv.weight"]
    hidden = qkv.shape[-1]
    q, k, v = torch.split(qkv, [nk * dk, nk * dk, nv * dv])
    conv = tensors["conv1d.weight"]
    kernel = conv.shape[-1]
    conv_q, conv_k, conv_v = torch.split(conv, [nk * dk, nk * dk, nv * dv])
    if "value_to_key" in tensors:
        value_to_key = tensors["value_to_key"].to("cpu", torch.long)
    else:
        value_to_key = torch.arange(nv) // (nv // nk)
    return {
        "q": q.reshape(nk, dk, hidden),
        "k": k.reshape(nk, dk, hidden),
        "v": v.reshape(nv, dv, hidden),
        "z": tensors["in_proj_z.weight"].reshape(nv, dv, hidden),
        "b": tensors["in_proj_b.weight"],
        "a": tensors["in_proj_a.weight"],
        "conv_q": conv_q.reshape(nk, dk, 1, kernel),
        "conv_k": conv_k.reshape(nk, dk, 1, kernel),
        "conv_v": conv_v.reshape(nv, dv, 1, kernel),
        "A_log": tensors["A_log"],
        "dt_bias": tensors["dt_bias"],
        "norm": tensors["norm.weight"],
        "out": tensors["out_proj.weight"].reshape(hidden, nv, dv),
        "value_to_key": value_to_key,
    }


def _align_hooks(module: nn.Module) -> list:
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    return [h for h in hooks if isinstance(h, AlignDevicesHook)]


def _materialised_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `module` by name; offloaded (meta) ones read from accelerate's weight maps."""
    tensors = {}
    for prefix, sub in module.named_modules():
        for name, tensor in list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False)):
            full = f"{prefix}.{name}" if prefix else name
            if tensor is not None and tensor.device.type == "meta":
                value = None
                for hook in _align_hooks(sub):
                    if hook.offload and hook.weights_map is not None:
                        try:
                            value = hook.weights_map[name]
                        except KeyError:
                            continue
                        break
                if value is None:
                    raise AdapterError(
                        f"{full} of {type(module).__name__} is on the meta device and no accelerate offload map "
                        "holds it: load the model's weights before pruning."
                    )
                tensor = value
            tensors[full] = tensor.detach()
    return tensors


def _build_on_meta(cls: type[nn.Module], *args) -> nn.Module:
    with torch.device("meta"):
        return cls(*args)


def _load_tensors(new: nn.Module, state: dict[str, torch.Tensor], old: nn.Module) -> None:
    """Put `state` into `new` (built on meta) as real tensors, with `old`'s dtypes; then carry `old`'s accelerate
    hooks over (offloading hooks re-capture the new weights)."""
    reference = next(iter(old.parameters()))
    names = {name for name, _ in new.named_parameters()} | {name for name, _ in new.named_buffers()}
    missing, unexpected = names - set(state), set(state) - names
    if missing or unexpected:
        raise AdapterError(f"internal error: rebuilt layer state mismatch (missing {missing}, unexpected {unexpected}).")
    for name, value in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = new.get_submodule(owner_name) if owner_name else new
        if attr in owner._parameters:
            dtype = value.dtype if value.is_floating_point() else reference.dtype
            owner._parameters[attr] = nn.Parameter(value.to(dtype).contiguous(), requires_grad=reference.requires_grad)
        else:
            owner._buffers[attr] = value.contiguous()
    _carry_hooks(old, new)


def _carry_hooks(old: nn.Module, new: nn.Module) -> None:
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    old_hooks = {name: module._hf_hook for name, module in old.named_modules() if hasattr(module, "_hf_hook")}
    if not old_hooks:
        return
    template = old_hooks.get("") or next(iter(old_hooks.values()))

    def clone(hook):
        aligns = _align_hooks_of(hook)
        if not aligns:
            return hook
        h = aligns[0]
        return AlignDevicesHook(
            execution_device=h.execution_device,
            offload=h.offload,
            io_same_device=h.io_same_device,
            weights_map=None,
            offload_buffers=h.offload_buffers,
            place_submodules=h.place_submodules,
            skip_keys=h.skip_keys,
            tied_params_map=h.tied_params_map,
        )

    for name, module in new.named_modules():
        direct = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        hook = old_hooks.get(name)
        if hook is None and not direct:
            continue
        add_hook_to_module(module, clone(hook if hook is not None else template))


def _align_hooks_of(hook) -> list:
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    return [h for h in hooks if isinstance(h, AlignDevicesHook)]


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise AdapterError("internal error: layer module not found in the model.")


def check_can_carry_ragged(model: nn.Module) -> None:
    """Refuse (before any change) a model whose class has no registered ragged-pruned counterpart."""
    from ..modeling import PRUNED_CLASSES
    from ..plan import PlanError

    known = set(PRUNED_CLASSES) | {pair[1] for pair in PRUNED_CLASSES.values()}
    if type(model) not in known:
        raise PlanError(
            f"{type(model).__name__} cannot carry a ragged (per-layer) plan: ragged pruned models exist for "
            f"{sorted(cls.__name__ for cls in PRUNED_CLASSES)}. Use budget='uniform' (--budget uniform) for this "
            "model, or load it with one of those classes."
        )


def _swap_model_classes(model: nn.Module, ragged: bool) -> None:
    """Ragged results use the registered `*_rankpruned` config/model classes (own model_type); uniform ones the
    stock classes."""
    from ..modeling import PRUNED_CLASSES

    stock_to_pruned = {stock: pair for stock, pair in PRUNED_CLASSES.items()}
    pruned_to_stock = {pair[1]: stock for stock, pair in PRUNED_CLASSES.items()}
    config = model.config
    if ragged and type(model) in stock_to_pruned:
        config_class, model_class = stock_to_pruned[type(model)]
        config.__class__ = config_class
        model.__class__ = model_class
    elif not ragged and type(model) in pruned_to_stock:
        stock = pruned_to_stock[type(model)]
        config.__class__ = type(config).__mro__[1]
        model.__class__ = stock
