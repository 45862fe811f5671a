"""Nemotron-H: Mamba2 SSD mixers (8 heads of dim 16 in 2 groups, state size 16: the shared geometry's 8 value heads
over 2 key heads) in the linear-attention blocks, one attention block."""

from transformers import NemotronHConfig, NemotronHForCausalLM

from . import TinyFamily, fill_dt_bias, register


def build(values: dict, vision: bool):
    config = NemotronHConfig(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        intermediate_size=128,
        layers_block_type=values["layer_types"],
        num_attention_heads=values["num_attention_heads"],
        num_key_value_heads=values["num_key_value_heads"],
        head_dim=values["head_dim"],
        mamba_num_heads=values["linear_num_value_heads"],
        n_groups=values["linear_num_key_heads"],
        mamba_head_dim=values["linear_value_head_dim"],
        ssm_state_size=values["linear_key_head_dim"],
        conv_kernel=values["linear_conv_kernel_dim"],
        max_position_embeddings=values["max_position_embeddings"],
        eos_token_id=0,
        pad_token_id=None,
        bos_token_id=None,
    )
    return fill_dt_bias(NemotronHForCausalLM(config), 1.0)  # softplus(1) = 1.31, as the GDN families' default


register(TinyFamily("nemotron_h", build))
