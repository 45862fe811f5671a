"""State observation during calibration, shared by the delta-rule families (gated delta rule, Kimi delta attention).

Their layers call a chunked prefill kernel `kernel(query, key, value, g, beta, *, initial_state, output_final_state,
...)` through a module global looked up at call time; `observe_chunk_kernel` swaps that global for an observer while
a `with` block runs. A family names the sites (modeling module, global name) and its torch reference kernel with a
chunk callback; everything else is written once here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType

import torch

from .base import LinearAttentionAdapter, StateCallback

CHUNK = 64  # chunk length of the torch reference kernels: its chunk boundaries are the default calibration grid


@contextlib.contextmanager
def observe_chunk_kernel(
    adapter: LinearAttentionAdapter,
    grid: Sequence[int],
    callback: StateCallback,
    sites: Sequence[tuple[ModuleType, str]],
    one_pass_kernel: Callable,
) -> Iterator[None]:
    """Route every prefill kernel call of the adapter's linear layers through an observer.

    On CPU, when every grid point inside the sequence is a multiple of 64 (the default grid), the layer runs once
    through the family's torch reference `one_pass_kernel`, which hands over the state at each chunk boundary (the
    reference matches transformers' kernel to float32 round-off). Otherwise (GPUs, irregular grids) the model's own
    kernel runs segment by segment between grid points, carrying the state across. Calls that continue from a
    cached state (chunked prefill, decoding) pass through unobserved. Nothing per token is kept.
    """
    grid = list(grid)
    grid_index = {position: index for index, position in enumerate(grid)}

    def one_pass(layer, query, key, value, g, beta, output_final_state, kwargs):
        snapshot = _chunk_snapshots(layer, query.shape[1], grid_index, callback)
        extra = {"value_to_key": kwargs["value_to_key"]} if kwargs.get("value_to_key") is not None else {}
        output, state = one_pass_kernel(
            query, key, value, g, beta, scale=kwargs.get("scale"),
            use_qk_l2norm_in_kernel=kwargs.get("use_qk_l2norm_in_kernel", False),
            output_final_state=True, chunk_size=CHUNK, chunk_state_callback=snapshot, **extra,
        )  # fmt: skip
        return output, (state if output_final_state else None)

    def make_wrapper(original: Callable, current_layer: Callable[[], int | None]) -> Callable:
        # On CPU, bypass an fla kernel bound at import (it has no CPU driver): use the torch function it wraps.
        torch_original = getattr(original, "__wrapped__", original)

        def observed(query, key, value, g, beta, *args, initial_state=None, output_final_state=False, **kwargs):
            layer = current_layer()
            on_cpu = query.device.type == "cpu"
            kernel = torch_original if on_cpu else original
            if layer is None or initial_state is not None or args or kwargs.get("cu_seqlens") is not None:
                return kernel(
                    query, key, value, g, beta, *args,
                    initial_state=initial_state, output_final_state=output_final_state, **kwargs,
                )  # fmt: skip
            length = query.shape[1]
            if on_cpu and all(position % CHUNK == 0 for position in grid if position < length):
                return one_pass(layer, query, key, value, g, beta, output_final_state, kwargs)
            outputs, state, start = [], None, 0
            ends = [position for position in grid if position <= length]
            if not ends or ends[-1] != length:
                ends.append(length)
            for end in ends:
                output, state = kernel(
                    query[:, start:end], key[:, start:end], value[:, start:end],
                    g=g[:, start:end], beta=beta[:, start:end],
                    initial_state=state, output_final_state=True, **kwargs,
                )  # fmt: skip
                outputs.append(output)
                if end in grid_index:
                    callback(layer, grid_index[end], state)
                start = end
            return torch.cat(outputs, dim=1), (state if output_final_state else None)

        return observed

    with _patched_sites(adapter, [(site, name, make_wrapper) for site, name in sites]):
        yield


def _chunk_snapshots(layer: int, length: int, grid_index: dict[int, int], callback: StateCallback) -> Callable:
    """The chunk callback of a reference kernel run over `length` tokens in chunks of 64: hands the state after each
    chunk to `callback` when the chunk ends on a grid position."""

    def snapshot(chunk: int, state) -> None:
        position = min((chunk + 1) * CHUNK, length)
        if position in grid_index:
            callback(layer, grid_index[position], state)

    return snapshot


@contextlib.contextmanager
def _patched_sites(adapter, sites: Sequence[tuple[ModuleType, str, Callable]]) -> Iterator[None]:
    """Wrap each (module, global name) kernel with its `make_wrapper(original, current_layer)`; forward pre-hooks on
    the layer modules tell the wrappers which layer is calling. Weights and forward code are untouched."""
    active: list[int | None] = [None]

    def enter(module, args):
        active[0] = module.layer_idx

    def leave(module, args, output):
        active[0] = None

    handles = []
    patched: list[tuple[ModuleType, str, Callable]] = []
    try:
        for layer in adapter.linear_layers():
            handles.append(layer.module.register_forward_pre_hook(enter))
            handles.append(layer.module.register_forward_hook(leave))
        for site, name, make_wrapper in sites:
            original = getattr(site, name)
            patched.append((site, name, original))
            setattr(site, name, make_wrapper(original, lambda: active[0]))
        yield
    finally:
        for site, name, original in reversed(patched):
            setattr(site, name, original)
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def observe_ssd_scan(
    adapter: LinearAttentionAdapter,
    grid: Sequence[int],
    callback: StateCallback,
    stock_sites: Sequence[tuple[ModuleType, str]],
    ragged_sites: Sequence[tuple[ModuleType, str]],
    one_pass_kernel: Callable,
) -> Iterator[None]:
    """The Mamba2 SSD analogue of `observe_chunk_kernel`: the stock layers call `mamba2_chunk_scan(x, dt, A, B, C,
    chunk_size, ..., initial_states=, return_final_states=)` and the ragged ones `ssd_chunk_scan(x, dt, A, B, C,
    head_to_group, ..., initial_state=, output_final_state=)`; both are run through `one_pass_kernel` (the package's
    SSD reference, which takes the head->group map) in one pass over the whole prefill, calling back at every grid
    position, which must be a multiple of 64 inside the sequence (SSD layers are calibrated on the default grid).
    States are handed over as the cache holds them, [batch, heads, head_dim, d_state] (the transpose of the other
    families' [d_k, d_v] orientation; every state statistic is transpose-invariant). Outputs equal the stock kernel's
    to float32 round-off; nothing per token is kept."""
    grid = list(grid)
    grid_index = {position: index for index, position in enumerate(grid)}

    def observe(layer, x, dt, A, B, C, head_to_group, kwargs):
        length = x.shape[1]
        off_grid = [position for position in grid if position < length and position % CHUNK]
        if off_grid:
            raise ValueError(
                f"SSD layers are observed at multiples of {CHUNK} tokens; the grid has {off_grid}: use the default "
                "grid (grid_step 64)."
            )

        snapshot = _chunk_snapshots(layer, length, grid_index, callback)
        return one_pass_kernel(
            x, dt, A, B, C, head_to_group=head_to_group, chunk_size=CHUNK, D=kwargs.get("D"),
            dt_bias=kwargs.get("dt_bias"), dt_softplus=kwargs.get("dt_softplus", False),
            dt_limit=kwargs.get("dt_limit", (0.0, float("inf"))), output_final_state=True,
            chunk_state_callback=snapshot,
        )  # fmt: skip

    def wrap_stock(original: Callable, current_layer: Callable[[], int | None]) -> Callable:
        torch_original = getattr(original, "__wrapped__", original)

        def observed(x, dt, A, B, C, *args, **kwargs):
            layer = current_layer()
            kernel = torch_original if x.device.type == "cpu" else original
            if layer is None or args or kwargs.get("initial_states") is not None or kwargs.get("seq_idx") is not None:
                return kernel(x, dt, A, B, C, *args, **kwargs)
            output, state = observe(layer, x, dt, A, B, C, None, kwargs)
            return (output, state) if kwargs.get("return_final_states") else output

        return observed

    def wrap_ragged(original: Callable, current_layer: Callable[[], int | None]) -> Callable:
        def observed(x, dt, A, B, C, head_to_group=None, **kwargs):
            layer = current_layer()
            if layer is None or kwargs.get("initial_state") is not None:
                return original(x, dt, A, B, C, head_to_group, **kwargs)
            output, state = observe(layer, x, dt, A, B, C, head_to_group, kwargs)
            return output, (state if kwargs.get("output_final_state") else None)

        return observed

    wrapped = [(site, name, wrap_stock) for site, name in stock_sites]
    wrapped += [(site, name, wrap_ragged) for site, name in ragged_sites]
    with _patched_sites(adapter, wrapped):
        yield
