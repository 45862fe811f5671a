"""Kimi-Linear: Kimi delta attention (8 heads of dim 16 in the shared geometry: no key-head groups), MLA full
attention, dense MLPs. Its checkpoints carry `linear_attn_config` (1-indexed layer lists), as the released ones do."""

from transformers import KimiLinearConfig, KimiLinearForCausalLM

from . import TinyFamily, fill_dt_bias, register


def build(values: dict, vision: bool):
    layer_types = values["layer_types"]
    config = KimiLinearConfig(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        intermediate_size=128,
        num_hidden_layers=values["num_hidden_layers"],
        num_attention_heads=values["num_attention_heads"],
        num_key_value_heads=values["num_attention_heads"],
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=values["max_position_embeddings"],
        first_k_dense_replace=values["num_hidden_layers"],
        linear_attn_config={
            "num_heads": values["linear_num_value_heads"],
            "head_dim": values["linear_value_head_dim"],
            "short_conv_kernel_size": values["linear_conv_kernel_dim"],
            "kda_layers": [i + 1 for i, kind in enumerate(layer_types) if kind == "linear_attention"],
            "full_attn_layers": [i + 1 for i, kind in enumerate(layer_types) if kind == "full_attention"],
        },
        eos_token_id=0,
        pad_token_id=None,
        bos_token_id=None,
    )
    # softplus(1) = 1.31: the other families' decay at their default dt_bias = 1
    return fill_dt_bias(KimiLinearForCausalLM(config), 1.0)


register(TinyFamily("kimi_linear", build))
