"""GLM-5 Next (GLM-5.3-Flash): Kimi delta attention with low-rank gates, `A_log` [H] and the safe forget gate,
`indexed_attention` (MLA with a DSA indexer) in place of full attention, hyper-connections around every layer, and no
text-only CausalLM: the public checkpoints are the vision-language `Glm5NextForConditionalGeneration`, so that is the
only form (8 KDA heads of dim 16 in the shared geometry)."""

from transformers import Glm5NextConfig, Glm5NextForConditionalGeneration, Glm5NextTextConfig

from . import TinyFamily, fill_dt_bias, register

VISION = dict(
    depth=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    projection_intermediate_size=64,
    patch_size=4,
    temporal_patch_size=2,
    spatial_merge_size=2,
    image_size=16,
)
TOKENS = dict(image_token_id=310, video_token_id=311, image_start_token_id=312, image_end_token_id=313,
              video_start_token_id=314, video_end_token_id=315)  # fmt: skip


def build(values: dict, vision: bool):
    text = Glm5NextTextConfig(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=values["num_hidden_layers"],
        layer_types=values["layer_types"],
        mlp_layer_types=["dense"] * values["num_hidden_layers"],
        num_attention_heads=values["num_attention_heads"],
        num_key_value_heads=values["num_attention_heads"],
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=0,
        v_head_dim=16,
        index_topk=16,
        index_kpool=4,
        index_head_dim=16,
        index_n_heads=2,
        hc_mult=2,
        linear_num_heads=values["linear_num_value_heads"],
        linear_head_dim=values["linear_value_head_dim"],
        linear_conv_kernel_dim=values["linear_conv_kernel_dim"],
        max_position_embeddings=values["max_position_embeddings"],
        eos_token_id=0,
        pad_token_id=None,
    )
    vision_config = dict(VISION, out_hidden_size=values["hidden_size"])
    model = Glm5NextForConditionalGeneration(Glm5NextConfig(text_config=text, vision_config=vision_config, **TOKENS))
    return fill_dt_bias(model, -2.0)  # the safe gate -5 sigmoid(exp(A_log) (f - 2)): decays from ~0 to -2.5


register(TinyFamily("glm5_next", build, vision=True, causal_lm=False))
