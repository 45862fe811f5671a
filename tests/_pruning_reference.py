"""Independent references for head-removal tests: the original model with removed heads zeroed, and greedy decoding.

Zeroing the out_proj input columns of a removed value head removes exactly its contribution (heads are computed
independently, the gated norm is per head), without any slicing code.
"""

from __future__ import annotations

import copy

import torch

# Tiny models (tests/conftest.py): linear layers 0, 1, 3; 2 key heads x 8 value heads (key 0 <- values 0-3).
PLANS = {
    # different counts per layer, as a global budget gives; layer 3 also loses key head 0
    "global": {0: [0, 2, 3, 5], 1: [1, 2, 3, 4, 5, 6, 7], 3: [7]},
    # whole key groups removed (layer 3 untouched)
    "key_groups": {0: [4, 5, 6, 7], 1: [0, 1, 2, 3]},
    # unequal groups in every layer
    "ragged_groups": {0: [0, 1, 2, 5], 1: [3, 4], 3: [0, 5, 6, 7]},
    # same counts everywhere, equal consecutive groups: stock config
    "uniform": {0: [0, 1, 4, 5], 1: [2, 3, 6, 7], 3: [0, 3, 5, 6]},
    # uniform with a key head dropped in every layer
    "uniform_key_drop": {0: [4, 5, 6, 7], 1: [0, 1, 2, 3], 3: [0, 1, 2, 3]},
    # the same count everywhere, unequal groups: a stock layout replicates key heads (groups of 2, one extra key head)
    "equal_counts": {0: [0, 1, 2, 3, 4, 5], 1: [2, 3, 4, 5, 6, 7], 3: [0, 1, 2, 3, 6, 7]},
    # the same count everywhere, groups of 1 and 2: a stock layout gives every value head its own key head
    "equal_counts_odd": {0: [0, 1, 4], 1: [0, 4, 5], 3: [1, 2, 7]},
}
UNIFORM = {"uniform", "uniform_key_drop"}


def expected_uniform(kind: str, geometry) -> bool:
    """Whether PLANS[kind] gives a uniform plan on a model of `geometry`: the UNIFORM kinds for grouped key heads
    (2 x 8); without key-head groups (Kimi delta attention: one value head per key head) any plan that keeps the same
    number of heads in every layer."""
    if all(layer.num_key_heads == layer.num_value_heads for layer in geometry.layers):
        return len({len(PLANS[kind].get(layer.index, range(layer.num_value_heads))) for layer in geometry.layers}) == 1
    # families with a linear layer the plans leave alone (Mamba2, Zamba2: layer 2) keep it whole: not uniform
    return kind in UNIFORM and {layer.index for layer in geometry.layers} <= set(PLANS[kind])


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The language model's decoder layers of a CausalLM or a vision-language model."""
    return getattr(model.model, "language_model", model.model).layers


def zeroed_reference(model: torch.nn.Module, kept: dict[int, list[int]]) -> torch.nn.Module:
    """A copy of the (unpruned) `model` whose value heads not in `kept[layer]` are zeroed in the output projection
    (the adapter's `head_output_modules`: `out_proj`, or the family's name for it). Mamba2 SSD mixers normalise over
    groups of heads, so there the removed heads are masked inside the mixer instead (`mask_ssd_heads`)."""
    from hf_rankprune.arch import get_adapter  # here: fresh processes that must not import hf_rankprune use greedy()

    reference = copy.deepcopy(model)
    adapter = get_adapter(reference)
    if adapter.family == "mamba2_ssd":
        for layer in adapter.linear_layers():
            if layer.index in kept:
                mask_ssd_heads(layer.module, kept[layer.index])
        return reference
    for layer, projection in adapter.head_output_modules():
        if layer.index not in kept:
            continue
        columns = projection.weight.view(projection.weight.shape[0], layer.num_value_heads, layer.value_dim)
        with torch.no_grad():
            for head in range(layer.num_value_heads):
                if head not in kept[layer.index]:
                    columns[:, head] = 0
    return reference


def mask_ssd_heads(mixer: torch.nn.Module, kept: list[int]) -> None:
    """The exactness reference of SSD head removal, written from the stock mixer's gated norm (gate, then RMS over
    each group of I / G channels): the heads not in `kept` are zeroed before the norm's statistics, which each group
    takes over its remaining heads only; the removed heads' outputs are then zero.

    Falcon-H1 (`FalconH1Mixer`): without `mamba_rms_norm` its norm is an identity that the mixer does not call (the
    output is y * silu(z), heads do not interact), so the removed heads' y * silu(z) are zeroed where out_proj reads
    them; with it, `FalconH1RMSNormGated` multiplies its weight in fp32 and, with `norm_before_gate`, gates after
    the norm."""
    norm, heads, head_dim = mixer.norm, mixer.num_heads, mixer.head_dim
    groups = torch.arange(heads) // (heads // mixer.n_groups)
    keep = torch.zeros(heads, dtype=torch.bool)
    keep[list(kept)] = True
    falcon = hasattr(mixer, "mamba_rms_norm")
    if falcon and not mixer.mamba_rms_norm:
        channels = keep.repeat_interleave(head_dim)
        mixer.out_proj.register_forward_pre_hook(lambda module, args: (args[0] * channels.to(args[0]),))
        return
    gate_after = falcon and norm.norm_before_gate

    def forward(hidden_states, gate=None):
        states = hidden_states.to(torch.float32)
        if not gate_after:
            states = states * torch.nn.functional.silu(gate.to(torch.float32))
        states = states.view(*states.shape[:-1], heads, head_dim) * keep[:, None]
        out = torch.zeros_like(states)
        for group in range(mixer.n_groups):
            members = (groups == group) & keep
            if members.any():
                variance = states[..., members, :].pow(2).mean(dim=(-2, -1), keepdim=True)
                out[..., members, :] = states[..., members, :] * torch.rsqrt(variance + norm.variance_epsilon)
        if not falcon:
            return norm.weight * out.reshape(hidden_states.shape).to(hidden_states.dtype)
        out = norm.weight * out.reshape(hidden_states.shape)
        if gate_after:
            out = out * torch.nn.functional.silu(gate.to(torch.float32))
        return out.to(hidden_states.dtype)

    norm.forward = forward


def greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int = 16):
    """(generated token ids, per-step logits) of cached greedy decoding."""
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    return out.sequences, torch.stack(out.logits, dim=1)


def prefill_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def assert_same_outputs(pruned, reference, seed: int = 0, atol: float = 1e-5) -> None:
    generator = torch.Generator().manual_seed(seed)
    vocab = pruned.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (2, 70), generator=generator)
    diff = (prefill_logits(pruned, ids) - prefill_logits(reference, ids)).abs().max().item()
    assert diff <= atol, f"prefill logits differ by {diff}"
    sequences, logits = greedy(pruned, ids[:, :9])
    ref_sequences, ref_logits = greedy(reference, ids[:, :9])
    assert torch.equal(sequences, ref_sequences), "greedy decoding chose different tokens"
    diff = (logits - ref_logits).abs().max().item()
    assert diff <= atol, f"decode logits differ by {diff}"
