"""Qwen3-Next: `Qwen3NextGatedDeltaNet`, with q/k/v/z interleaved per key head in `in_proj_qkvz`."""

from __future__ import annotations

import torch
from transformers.models.qwen3_next import modeling_qwen3_next

from .base import AdapterError, LinearAttentionAdapter, _pruned_layer_class, register_adapter


@register_adapter
class Qwen3NextAdapter(LinearAttentionAdapter):
    family = "qwen3_next"
    model_types = ("qwen3_next", "qwen3_next_rankpruned")

    def layer_classes(self):
        return (modeling_qwen3_next.Qwen3NextGatedDeltaNet, _pruned_layer_class())

    def chunk_kernel_sites(self):
        return [(modeling_qwen3_next, "torch_chunk_gated_delta_rule")]

    # -- surgery: in_proj_qkvz is interleaved per key head as [q dk | k dk | v r*dv | z r*dv], in_proj_ba as
    # [b r | a r]; conv1d channels are [q all | k all | v all] -------------------------------------------------
    def _stock_layer_class(self):
        return modeling_qwen3_next.Qwen3NextGatedDeltaNet

    def _stock_weights(self, module, tensors):
        nk, nv, dk, dv = module.num_k_heads, module.num_v_heads, module.head_k_dim, module.head_v_dim
        ratio = nv // nk
        qkvz = tensors["in_proj_qkvz.weight"]
        hidden = qkvz.shape[-1]
        q, k, v, z = torch.split(qkvz.reshape(nk, 2 * dk + 2 * ratio * dv, hidden), [dk, dk, ratio * dv, ratio * dv], 1)
        b, a = torch.split(tensors["in_proj_ba.weight"].reshape(nk, 2 * ratio, hidden), [ratio, ratio], 1)
        conv = tensors["conv1d.weight"]
        kernel = conv.shape[-1]
        conv_q, conv_k, conv_v = torch.split(conv, [nk * dk, nk * dk, nv * dv])
        return {
            "q": q,
            "k": k,
            "v": v.reshape(nv, dv, hidden),
            "z": z.reshape(nv, dv, hidden),
            "b": b.reshape(nv, hidden),
            "a": a.reshape(nv, hidden),
            "conv_q": conv_q.reshape(nk, dk, 1, kernel),
            "conv_k": conv_k.reshape(nk, dk, 1, kernel),
            "conv_v": conv_v.reshape(nv, dv, 1, kernel),
            "A_log": tensors["A_log"],
            "dt_bias": tensors["dt_bias"],
            "norm": tensors["norm.weight"],
            "out": tensors["out_proj.weight"].reshape(hidden, nv, dv),
            "value_to_key": torch.arange(nv) // ratio,
        }

    def _stock_state(self, weights):
        nk, dk, hidden = weights["q"].shape
        nv, dv, _ = weights["v"].shape
        ratio = nv // nk
        if nv % nk or weights["value_to_key"].tolist() != (torch.arange(nv) // ratio).tolist():
            raise AdapterError("a stock Qwen3-Next layer needs equal consecutive key groups; use a ragged layer.")
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
