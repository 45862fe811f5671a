"""Olmo-Hybrid: `OlmoHybridGatedDeltaNet`, with separate q/k/v/g(z)/a/b projections, beta x2 and a norm eps of 1e-5.

The stock layer differs from Qwen3.5's inside the layer in two ways, stored for ragged layers as their options:
`beta = 2 * sigmoid(b)` when `config.linear_allow_neg_eigval` (eigenvalues of the state transition in [-1, 1]), and
the gated output norm `o_norm` uses eps 1e-5 hard-coded in transformers (FLA's default), not `config.rms_norm_eps`.
By default nk = nv (no grouping) but d_v = 2 d_k.

Checkpoints store the short convolution as `q_conv1d` / `k_conv1d` / `v_conv1d`; transformers concatenates them into
`conv1d` at load, and at save splits `conv1d` back into 3 EQUAL pieces, which is wrong whenever
nk * d_k != nv * d_v (always, for the released geometry). Importing this file registers a corrected conversion for
`olmo_hybrid` (and, through the registry, `olmo_hybrid_rankpruned`): the same concatenation at load, reversed by a
split sized from the layer being saved ([nk*dk, nk*dk, nv*dv], per layer, so ragged layers too). Models loaded before
hf_rankprune was imported carry transformers' own conversion; the adapter corrects theirs in place before a save
(`prepare_save`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import Concatenate, ConversionOps, WeightConverter
from transformers.models.olmo_hybrid import modeling_olmo_hybrid

from ..errors import AdapterError
from .gated_deltanet import GatedDeltaNetAdapter, check_consecutive_groups, split_conv
from .registry import register_adapter

MODEL_TYPE = "olmo_hybrid"
CONV_SOURCES = ("linear_attn.q_conv1d.weight", "linear_attn.k_conv1d.weight", "linear_attn.v_conv1d.weight")
CONV_TARGET = "linear_attn.conv1d.weight"


# -- the on-disk conv split --------------------------------------------------------------------------------------------
class ConcatenateConv(Concatenate):
    """Load: join `q_conv1d`, `k_conv1d`, `v_conv1d` along channels (as transformers does). Its reverse, used at save,
    is `SplitConv` (transformers' `Concatenate` reverses to an equal 3-way `Chunk`)."""

    def __init__(self, dim: int = 0):
        super().__init__(dim)

    @property
    def reverse_op(self) -> ConversionOps:
        return SplitConv(self.dim)


class SplitConv(ConversionOps):
    """Save: split a layer's `conv1d.weight` [q all | k all | v all] into `q_conv1d`, `k_conv1d`, `v_conv1d` of
    nk*dk, nk*dk and nv*dv channels, read from the layer module being saved (stock or ragged)."""

    def __init__(self, dim: int = 0):
        self.dim = dim

    @torch.no_grad
    def convert(self, input_dict, source_patterns, target_patterns, full_layer_name=None, model=None, **kwargs):
        if len(input_dict) != 1 or len(target_patterns) != 3:
            raise ValueError("SplitConv splits one conv1d weight into q/k/v pieces.")
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        sizes = conv_split_sizes(model, full_layer_name, target_patterns[0], tensor.shape[self.dim])
        chunks = torch.split(tensor, sizes, dim=self.dim)
        return {target: chunk.contiguous() for target, chunk in zip(target_patterns, chunks)}

    @property
    def reverse_op(self) -> ConversionOps:
        return ConcatenateConv(self.dim)


def conv_split_sizes(model: nn.Module | None, key: str | None, first_target: str, channels: int) -> list[int]:
    """[nk*dk, nk*dk, nv*dv] of the linear layer whose conv weight is saved under `key` (named after the first
    target, `...linear_attn.q_conv1d.weight`); the model's config (stock head counts) when the module is not found."""
    module = None
    if model is not None and key and first_target in key:
        path = key[: key.index(first_target)] + CONV_TARGET.rsplit(".", 2)[0]  # "<prefix>linear_attn"
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
    if module is not None and hasattr(module, "key_dim") and hasattr(module, "value_dim"):
        sizes = [int(module.key_dim), int(module.key_dim), int(module.value_dim)]
    elif model is not None:
        config = model.config.get_text_config()
        key_dim = config.linear_num_key_heads * config.linear_key_head_dim
        sizes = [key_dim, key_dim, config.linear_num_value_heads * config.linear_value_head_dim]
    else:
        raise ValueError(f"cannot size the q/k/v pieces of {key}: no model given to the conversion.")
    if sum(sizes) != channels:
        raise ValueError(f"{key}: conv1d has {channels} channels, the layer expects q/k/v pieces of {sizes}.")
    return sizes


def _is_conv_converter(transform) -> bool:
    return isinstance(transform, WeightConverter) and list(transform.target_patterns) == [CONV_TARGET]


def corrected_conversion_mapping() -> list | None:
    """transformers' olmo_hybrid checkpoint conversion with the conv concatenation reversed by `SplitConv`."""
    mapping = get_checkpoint_conversion_mapping(MODEL_TYPE)
    if not mapping or not any(_is_conv_converter(transform) for transform in mapping):
        return None  # transformers changed its conversion: nothing of ours to correct
    return [
        WeightConverter(list(CONV_SOURCES), CONV_TARGET, operations=[ConcatenateConv(dim=0)])
        if _is_conv_converter(transform)
        else transform
        for transform in mapping
    ]


def correct_loaded_conversions(model: nn.Module) -> None:
    """Give a model loaded with transformers' own conversion (before hf_rankprune was imported) the corrected conv
    reverse in place; its `_weight_conversions` are what `save_pretrained` reverses."""
    for transform in getattr(model, "_weight_conversions", None) or ():
        if _is_conv_converter(transform) and not any(isinstance(op, ConcatenateConv) for op in transform.operations):
            transform.operations = [
                ConcatenateConv(op.dim) if type(op) is Concatenate else op for op in transform.operations
            ]


_mapping = corrected_conversion_mapping()
if _mapping is not None:  # before the adapter is registered: its `olmo_hybrid_rankpruned` type copies this mapping
    register_checkpoint_conversion_mapping(MODEL_TYPE, _mapping, overwrite=True)


# -- the adapter -------------------------------------------------------------------------------------------------------
@register_adapter
class OlmoHybridAdapter(GatedDeltaNetAdapter):
    model_types = (MODEL_TYPE,)
    ragged_model_classes = (modeling_olmo_hybrid.OlmoHybridForCausalLM,)
    modeling_modules = (modeling_olmo_hybrid,)
    output_projection = "o_proj"

    def stock_layer_classes(self):
        return (modeling_olmo_hybrid.OlmoHybridGatedDeltaNet,)

    # separate projections: q_proj/k_proj [nk*dk, H], v_proj/g_proj [nv*dv, H] (g is z), a_proj/b_proj [nv, H];
    # conv1d channels [q all | k all | v all]; o_norm [dv]; o_proj [H, nv*dv]; consecutive key groups
    def stock_canonical_weights(self, module, tensors):
        nk, nv, dk, dv = module.num_k_heads, module.num_v_heads, module.head_k_dim, module.head_v_dim
        hidden = tensors["q_proj.weight"].shape[-1]
        return {
            "q": tensors["q_proj.weight"].reshape(nk, dk, hidden),
            "k": tensors["k_proj.weight"].reshape(nk, dk, hidden),
            "v": tensors["v_proj.weight"].reshape(nv, dv, hidden),
            "z": tensors["g_proj.weight"].reshape(nv, dv, hidden),
            "b": tensors["b_proj.weight"],
            "a": tensors["a_proj.weight"],
            **split_conv(tensors["conv1d.weight"], nk, nv, dk, dv),
            "A_log": tensors["A_log"],
            "dt_bias": tensors["dt_bias"],
            "norm": tensors["o_norm.weight"],
            "out": tensors["o_proj.weight"].reshape(hidden, nv, dv),
            "value_to_key": torch.arange(nv) // (nv // nk),
        }

    def stock_state(self, weights):
        check_consecutive_groups(weights, "OlmoHybridGatedDeltaNet")
        hidden = weights["q"].shape[-1]
        kernel = weights["conv_q"].shape[-1]
        return {
            "q_proj.weight": weights["q"].reshape(-1, hidden),
            "k_proj.weight": weights["k"].reshape(-1, hidden),
            "v_proj.weight": weights["v"].reshape(-1, hidden),
            "g_proj.weight": weights["z"].reshape(-1, hidden),
            "b_proj.weight": weights["b"],
            "a_proj.weight": weights["a"],
            "conv1d.weight": torch.cat([weights[n].reshape(-1, 1, kernel) for n in ("conv_q", "conv_k", "conv_v")]),
            "A_log": weights["A_log"],
            "dt_bias": weights["dt_bias"],
            "o_norm.weight": weights["norm"],
            "o_proj.weight": weights["out"].reshape(hidden, -1),
        }

    def prepare_save(self):
        correct_loaded_conversions(self.model)

    def ragged_layer_options(self):
        """beta x2 with `linear_allow_neg_eigval`; the gated norm's eps and activation as the stock layer has them
        (eps 1e-5 hard-coded in transformers): read from a stock layer of the model, or of the code (built on meta)."""
        stock = self._stock_reference_layer()
        allow_neg_eigval = bool(getattr(stock, "allow_neg_eigval", self.config.linear_allow_neg_eigval))
        return {
            "gate_activation": stock.o_norm.activation,
            "beta_scale": 2.0 if allow_neg_eigval else 1.0,
            "norm_eps": float(stock.o_norm.variance_epsilon),
            "norm_weight_in_fp32": False,  # OlmoHybridRMSNormGated: weight * x.to(input_dtype)
        }

    def _stock_reference_layer(self) -> nn.Module:
        """A stock linear layer of the model, or one built on the meta device from the config when none is left."""
        stock_classes = self.stock_layer_classes()
        for module in self.model.modules():
            if isinstance(module, stock_classes):
                return module
        layer_types = list(getattr(self.config, "layer_types", None) or [])
        if "linear_attention" not in layer_types:
            raise AdapterError("olmo_hybrid config without linear_attention layers: no gated norm to read.")
        with torch.device("meta"):
            return self.build_stock_layer(layer_types.index("linear_attention"))
