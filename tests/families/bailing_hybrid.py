"""Bailing hybrid (Ling-3.0): Kimi delta attention with full-rank gates and the safe (bounded) forget gate, MLA full
attention, dense MLPs; 8 KDA heads of dim 16 (its config derives them from `num_attention_heads` and `head_dim`)."""

from transformers import BailingHybridConfig, BailingHybridForCausalLM

from . import TinyFamily, fill_dt_bias, register


def build(values: dict, vision: bool):
    config = BailingHybridConfig(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        intermediate_size=128,
        num_hidden_layers=values["num_hidden_layers"],
        layer_types=values["layer_types"],
        num_attention_heads=values["linear_num_value_heads"],
        num_key_value_heads=values["linear_num_value_heads"],
        head_dim=values["linear_value_head_dim"],
        short_conv_kernel_size=values["linear_conv_kernel_dim"],
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=values["max_position_embeddings"],
        first_k_dense_replace=values["num_hidden_layers"],
        num_mtp_layers=0,
        eos_token_id=0,
        pad_token_id=None,
        bos_token_id=None,
    )
    # the safe gate -5 sigmoid(exp(A_log) (f - 2)): decays from ~0 to -2.5 across the heads
    return fill_dt_bias(BailingHybridForCausalLM(config), -2.0)


register(TinyFamily("bailing_hybrid", build))
