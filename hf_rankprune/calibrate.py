"""Calibration: run the model's real forward on token samples and record every linear head's state on a grid.

The family's adapter (`observe_states`) hands every state on the grid to a callback as the recurrence reaches it.
Only the state being carried exists at a time, so memory does not grow with the sequence or the number of samples, and the forward's outputs are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .arch import get_adapter
from .arch.base import StateCallback
from .config import RankPruneConfig
from .errors import CalibrationError, NonFiniteStateError  # noqa: F401 (re-exported)
from .stats import RankStats, state_metrics


@contextlib.contextmanager
def observe_states(model: torch.nn.Module, grid: Sequence[int], callback: StateCallback) -> Iterator[None]:
    """Within the block, every prefill of a linear layer from an empty state calls `callback(layer, g, state)` at
    each grid position `grid[g]` (tokens seen) the sequence reaches; `state` is [batch, value_heads, d_k, d_v].
    How the states are observed is the family's (`LinearAttentionAdapter.observe_states`); the forward's outputs
    are unchanged and nothing per token is kept."""
    with get_adapter(model).observe_states(grid, callback):
        yield


def _as_samples(samples, categories: list[str] | None) -> tuple[torch.Tensor, list[str]]:
    """(input_ids [N, L], categories) from CalibrationSamples, or a LongTensor / list of token-id lists."""
    if hasattr(samples, "input_ids"):
        input_ids, categories = samples.input_ids, list(samples.categories)
    else:
        input_ids = torch.as_tensor(samples, dtype=torch.long)
        if categories is None:
            categories = ["default"] * (input_ids.shape[0] if input_ids.dim() == 2 else 0)
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise CalibrationError(
            f"No calibration samples: got input_ids of shape {tuple(input_ids.shape)}; give at least one sample "
            "of at least one token (a [num_samples, seq_len] tensor or hf_rankprune.data.load_calibration_samples)."
        )
    if len(categories) != input_ids.shape[0]:
        raise CalibrationError(f"{len(categories)} category labels for {input_ids.shape[0]} samples.")
    return input_ids, categories


def _input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device, or the CPU when it is offloaded (accelerate's hook moves them)."""
    weight = model.get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def calibrate(
    model: torch.nn.Module,
    samples,
    config: RankPruneConfig | None = None,
    *,
    categories: list[str] | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> RankStats:
    """Calibrate `model` on `samples` and return the merged `RankStats`.

    Under torch.distributed (torchrun, `accelerate launch`), each process calibrates samples[rank::world_size] and
    the statistics are summed across processes, so every process returns the same result as a one-process run.
    `samples`: `CalibrationSamples` (hf_rankprune.data), or token ids [N, L] with optional `categories` labels.
    """
    config = config or RankPruneConfig()
    adapter = get_adapter(model)
    input_ids, categories = _as_samples(samples, categories)
    seq_len = input_ids.shape[1]
    first_point = config.grid[0] if config.grid is not None else config.grid_step
    if seq_len < first_point:
        raise CalibrationError(
            f"Samples have {seq_len} tokens, shorter than the first grid point ({first_point}): use longer samples "
            f"(seq_len >= {first_point}) or a smaller grid_step / grid."
        )
    grid = config.grid_positions(seq_len)
    layers = adapter.linear_layers()
    position_of = {layer.index: position for position, layer in enumerate(layers)}
    stats = RankStats(
        layers=[layer.index for layer in layers],
        num_heads=[layer.num_value_heads for layer in layers],
        rank_caps=[layer.rank_cap for layer in layers],
        grid=grid,
        settings={
            "rank_eps": config.rank_eps,
            "seq_len": seq_len,
            "model_type": adapter.config.model_type,
            "model_name": model_name or getattr(model.config, "_name_or_path", None) or None,
        },
    )

    rank, world_size = _distributed()
    shard = range(rank, input_ids.shape[0], world_size)
    device = _input_device(model)
    batch_categories: list[str] = []

    def record(layer_index: int, grid_index: int, state: torch.Tensor) -> None:
        finite = torch.isfinite(state.sum(dim=(-2, -1)))  # NaN/inf anywhere in a head's state reaches its sum
        if not bool(finite.all()):
            row, head = (int(i) for i in torch.nonzero(~finite)[0])
            raise NonFiniteStateError(
                f"Non-finite state in layer {layer_index}, head {head} at token {grid[grid_index]} "
                f"(batch row {row}): the model produces NaN/inf there; check its weights and dtype (try float32)."
            )
        stats.add(position_of[layer_index], grid_index, state_metrics(state, config.rank_eps), batch_categories)

    was_training = model.training
    model.eval()
    bar = tqdm(total=len(shard), desc="calibrating", unit="sample", disable=not progress or rank != 0)
    try:
        with observe_states(model, grid, record):
            indices = list(shard)
            for start in range(0, len(indices), config.batch_size):
                batch = indices[start : start + config.batch_size]
                batch_categories[:] = [categories[i] for i in batch]
                model(input_ids=input_ids[batch].to(device), use_cache=False)
                bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    stats.settings["num_samples"] = stats.num_samples
    if world_size > 1:
        backend = torch.distributed.get_backend()
        reduce_device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        stats.all_reduce(reduce_device)
    return stats
