"""Qwen4-Exp (MoE, hyper-connections): its attention layers are `indexed_attention` (a QSA indexer that caches its own
keys besides K/V), and the gated norm of its linear layers takes `output_gate_type` (sigmoid here, not the silu of
`hidden_act`, so the tests see that the ragged layer's gate activation option is taken)."""

from transformers import Qwen4ExpConfig, Qwen4ExpForCausalLM, Qwen4ExpForConditionalGeneration, Qwen4ExpTextConfig

from . import COMMON, MOE, TinyFamily, register

INDEXER = dict(  # tiny QSA indexer: 2 query heads, its one key head of dim 16 (>= the rotary dim of head_dim 16)
    indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=4, indexer_compress_ratio=2
)
VISION = dict(  # a tiny vision tower
    depth=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=COMMON["hidden_size"],
    patch_size=4,
    temporal_patch_size=2,
    spatial_merge_size=2,
    num_position_embeddings=16,
)
VISION_TOKENS = dict(image_token_id=310, video_token_id=311, vision_start_token_id=312, vision_end_token_id=313)


def build(values: dict, vision: bool):
    layer_types = ["indexed_attention" if kind == "full_attention" else kind for kind in values["layer_types"]]
    values = {"eos_token_id": 0, "output_gate_type": "sigmoid", "hc_count": 2, "hc_lowrank": 16, **values}
    text = Qwen4ExpTextConfig(**MOE, **INDEXER, **{**values, "layer_types": layer_types})
    if vision:
        return Qwen4ExpForConditionalGeneration(Qwen4ExpConfig(text_config=text, vision_config=VISION, **VISION_TOKENS))
    return Qwen4ExpForCausalLM(text)


register(TinyFamily("qwen4_exp", build, vision=True))
