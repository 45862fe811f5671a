"""accelerate integration of surgery: reading offloaded weights and carrying dispatch hooks over to rebuilt modules.

A model dispatched with a `device_map` (CPU/disk offload) keeps some weights on the meta device and reads them through
its `AlignDevicesHook`s' weight maps; surgery reads them from there and gives every rebuilt module the hooks of the
module it replaces, so the pruned model runs on the same devices as before. (Not named `accelerate.py`: scripts run
from this folder, such as `vllm_generate.py`, would import it instead of the accelerate package.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import AdapterError


def align_hooks(hook) -> list:
    """The `AlignDevicesHook`s in `hook` (one, or the members of a `SequentialHook`)."""
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    if hook is None:
        return []
    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    return [h for h in hooks if isinstance(h, AlignDevicesHook)]


def materialised_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `module` by name; offloaded (meta) ones read from accelerate's weight maps."""
    tensors = {}
    for prefix, sub in module.named_modules():
        for name, tensor in list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False)):
            full = f"{prefix}.{name}" if prefix else name
            if tensor is not None and tensor.device.type == "meta":
                value = None
                for hook in align_hooks(getattr(sub, "_hf_hook", None)):
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


def carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """Give `new` (replacing `old`) `old`'s dispatch hooks: same execution device and offloading, weight maps
    re-captured from the new weights."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    old_hooks = {name: module._hf_hook for name, module in old.named_modules() if hasattr(module, "_hf_hook")}
    if not old_hooks:
        return
    template = old_hooks.get("") or next(iter(old_hooks.values()))

    def clone(hook):
        aligns = align_hooks(hook)
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
