"""Qwen3-Next: `Qwen3NextGatedDeltaNet`, with q/k/v/z interleaved per key head in `in_proj_qkvz`."""

from __future__ import annotations

import torch
from transformers.models.qwen3_next import modeling_qwen3_next

from .gated_deltanet import GatedDeltaNetAdapter, check_consecutive_groups, split_conv
from .registry import register_adapter


@register_adapter
class Qwen3NextAdapter(GatedDeltaNetAdapter):
    model_types = ("qwen3_next",)
    ragged_model_classes = (modeling_qwen3_next.Qwen3NextForCausalLM,)
    modeling_modules = (modeling_qwen3_next,)

    def stock_layer_classes(self):
        return (modeling_qwen3_next.Qwen3NextGatedDeltaNet,)

    # in_proj_qkvz is interleaved per key head as [q dk | k dk | v r*dv | z r*dv], in_proj_ba as [b r | a r];
    # conv1d channels are [q all | k all | v all]
    def stock_canonical_weights(self, module, tensors):
        nk, nv, dk, dv = module.num_k_heads, module.num_v_heads, module.head_k_dim, module.head_v_dim
        ratio = nv // nk
        qkvz = tensors["in_proj_qkvz.weight"]
        hidden = qkvz.shape[-1]
        q, k, v, z = torch.split(qkvz.reshape(nk, 2 * dk + 2 * ratio * dv, hidden), [dk, dk, ratio * dv, ratio * dv], 1)
        b, a = torch.split(tensors["in_proj_ba.weight"].reshape(nk, 2 * ratio, hidden), [ratio, ratio], 1)
        return {
            "q": q,
            "k": k,
            "v": v.reshape(nv, dv, hidden),
            "z": z.reshape(nv, dv, hidden),
            "b": b.reshape(nv, hidden),
            "a": a.reshape(nv, hidden),
            **split_conv(tensors["conv1d.weight"], nk, nv, dk, dv),
            "A_log": tensors["A_log"],
            "dt_bias": tensors["dt_bias"],
            "norm": tensors["norm.weight"],
            "out": tensors["out_proj.weight"].reshape(hidden, nv, dv),
            "value_to_key": torch.arange(nv) // ratio,
        }

    def stock_state(self, weights):
        check_consecutive_groups(weights, "Qwen3NextGatedDeltaNet")
        nk, dk, hidden = weights["q"].shape
        nv, dv, _ = weights["v"].shape
        ratio = nv // nk
        qkvz = torch.cat(
            [
                weights["q"],
                weights["k"],
                weights["v"].reshape(nk, ratio * dv, hidden),
                weights["z"].reshape(nk, ratio * dv, hidden),
            ],
            dim=1,
        )
        ba = torch.cat([weights["b"].reshape(nk, ratio, hidden), weights["a"].reshape(nk, ratio, hidden)], dim=1)
        kernel = weights["conv_q"].shape[-1]
        return {
            "in_proj_qkvz.weight": qkvz.reshape(-1, hidden),
            "in_proj_ba.weight": ba.reshape(-1, hidden),
            "conv1d.weight": torch.cat([weights[n].reshape(-1, 1, kernel) for n in ("conv_q", "conv_k", "conv_v")]),
            "A_log": weights["A_log"],
            "dt_bias": weights["dt_bias"],
            "norm.weight": weights["norm"],
            "out_proj.weight": weights["out"].reshape(hidden, -1),
        }
