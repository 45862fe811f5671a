"""Qwen4-Exp (MoE, hyper-connections): its attention layers are `indexed_attention` (a QSA indexer that caches its own
keys besides K/V), and the gated norm of its linear layers takes `output_gate_type` (sigmoid here, not the silu of
`hidden_act`, so the tests see that the ragged layer's gate activation option is taken)."""

from transformers import Qwen4ExpConfig, Qwen4ExpForCausalLM, Qwen4ExpForConditionalGeneration, Qwen4ExpTextConfig

from . import MOE, VISION, VISION_TOKENS, TinyFamily, register

INDEXER = dict(  # tiny QSA indexer: 2 query heads, its one key head of dim 16 (>= the rotary dim of head_dim 16)
    indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=4, indexer_compress_ratio=2
)
def build(values: dict, vision: bool):
    layer_types = ["indexed_attention" if kind == "full_attention" else kind for kind in values["layer_types"]]
    values = {"eos_token_id": 0, "output_gate_type": "sigmoid", "hc_count": 2, "hc_lowrank": 16, **values}
    text = Qwen4ExpTextConfig(**MOE, **INDEXER, **{**values, "layer_types": layer_types})
    if vision:
        return Qwen4ExpForConditionalGeneration(Qwen4ExpConfig(text_config=text, vision_config=VISION, **VISION_TOKENS))
    return Qwen4ExpForCausalLM(text)


register(TinyFamily("qwen4_exp", build, vision=True))
