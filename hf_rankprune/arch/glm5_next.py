"""GLM-5 Next (GLM-5.3-Flash): Kimi-Linear's layer layout with `A_log` [H] and the safe forget gate
(`linear_lower_bound`), inside a vision-language model: there is no text-only CausalLM, the language model sits at
`model.model.language_model` with hyper-connections around each layer (which leave the layer's input and output
`hidden_size` wide).

Like Kimi-Linear, checkpoints may carry `linear_attn_config`, which overrides `linear_num_heads` on reload (both are
edited). The attention layers are `indexed_attention`: MLA caching its compressed latent (kv_lora_rank +
qk_rope_head_dim per token); those whose `indexer_types` entry is "full" run a DSA indexer that also caches, per
token, its key, its k-pool gate scores (index_head_dim each) and a validity channel ("shared" layers reuse the
previous indexer's choice and cache nothing more); checked against transformers' cache in tests/test_memory.py.
"""

from __future__ import annotations

from transformers.models.glm5_next import modeling_glm5_next

from .kimi_delta import KimiDeltaAttentionAdapter, kda_head_axes
from .registry import register_adapter


@register_adapter
class Glm5NextAdapter(KimiDeltaAttentionAdapter):
    model_types = ("glm5_next", "glm5_next_text")
    ragged_model_classes = (modeling_glm5_next.Glm5NextForConditionalGeneration,)
    stock_layer = modeling_glm5_next.Glm5NextTextLinearAttention
    modeling_module = modeling_glm5_next
    head_axes = kda_head_axes("low_rank")
    attention_kind = "indexed_attention"

    def attention_caches(self):
        config = self.config
        caches = super().attention_caches()
        indexers = [i for i in caches[0]["layers"] if config.indexer_types[i] == "full"]
        caches.append({"kind": self.attention_kind, "layers": indexers, "window": None,
                       "elements_per_token": 2 * config.index_head_dim + 1})  # fmt: skip
        return caches
