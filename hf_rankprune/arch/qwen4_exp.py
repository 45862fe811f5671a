"""Qwen4-Exp (text or vision-language checkpoints): Qwen3.5's contiguous gated delta net, with two differences.

- The gated norm's activation is `output_gate_type` ("sigmoid" or "silu"; unset: `hidden_act`), which the ragged
  layer takes from `rankprune_layer_options`.
- The attention layers are `indexed_attention`: full K/V for every token, plus the keys of a QSA indexer
  (`Qwen4ExpTextQSAIndexer`, one key head of `indexer_head_dim`) cached per token by `cache.update_indexer`.

Hyper-connections and PLE n-gram layers sit around the linear layer (it still maps `hidden_size` to `hidden_size`) and
PLE uses conv states 1 and 2 of its layers' caches (the gated delta net uses state 0): fixed states the memory
formula counts (`fixed_states`) and pruning leaves alone. The checkpoint conversion of `qwen4_exp_text` touches only MoE experts and n-gram shards.
"""

from __future__ import annotations

from transformers.models.qwen4_exp import modeling_qwen4_exp

from .gated_deltanet import GatedDeltaNetAdapter
from .registry import register_adapter


@register_adapter
class Qwen4ExpAdapter(GatedDeltaNetAdapter):
    model_types = ("qwen4_exp", "qwen4_exp_text")
    ragged_model_classes = (
        modeling_qwen4_exp.Qwen4ExpForCausalLM,
        modeling_qwen4_exp.Qwen4ExpForConditionalGeneration,
    )
    modeling_modules = (modeling_qwen4_exp,)

    def stock_layer_classes(self):
        return (modeling_qwen4_exp.Qwen4ExpTextGatedDeltaNet,)

    def ragged_layer_options(self):
        return {"gate_activation": self.config.output_gate_type or self.config.hidden_act}

    def attention_caches(self):
        """Full attention's caches by `layer_types`, and the `indexed_attention` layers: every token's K/V
        (2 * num_key_value_heads * head_dim, `cache.update`) and its QSA indexer key (indexer_kv_heads *
        indexer_head_dim, `cache.update_indexer`), plus the indexers' int64 position ids (3 per token, once)."""
        config = self.config
        caches = super().attention_caches()
        layers = [i for i, kind in enumerate(config.layer_types) if kind == "indexed_attention"]
        if layers:
            kv = 2 * config.num_key_value_heads * config.head_dim
            indexer = int(config.indexer_kv_heads or 0) * int(config.indexer_head_dim or 0)
            caches.append({"kind": "indexed_attention", "layers": layers, "elements_per_token": kv + indexer,
                           "window": None})  # fmt: skip
            # the indexers' shared 3-D position ids, int64, kept once per model on the first indexed layer's cache
            caches.append({"kind": "indexed_attention", "layers": layers[:1], "elements_per_token": 3, "window": None,
                           "dtype": "int64"})  # fmt: skip
        return caches

    def fixed_states(self):
        """PLE layers (one-indexed `ple_layer_ids`) keep, in their decoder layer's cache, a dilated conv state of
        hc_count * hidden_size channels x (ple_conv_kernel_size - 1) * ngram_size columns (model dtype) and the last
        ngram_size - 1 token ids (int64)."""
        config = self.config
        layers = [layer_id - 1 for layer_id in config.ple_layer_ids or ()]
        if not layers:
            return []
        channels = (config.hc_count or 1) * config.hidden_size
        columns = (config.ple_conv_kernel_size - 1) * config.ngram_size
        return [
            {"kind": "ple_convolution", "layers": layers, "elements": channels * columns, "dtype": None},
            {"kind": "ple_token_ids", "layers": layers, "elements": config.ngram_size - 1, "dtype": "int64"},
        ]
