"""Zamba2: a mixer in every layer (8 heads of dim 16 in 2 groups, state 16: mamba_expand 2 on hidden 64); layer 2 is
"hybrid" (the shared transformer block, then its mixer at `mamba_decoder.mamba`), the others "linear_attention". The
plans address layers 0, 1 and 3. Its config derives the mixer width from hidden_size * mamba_expand."""

from transformers import Zamba2Config, Zamba2ForCausalLM

from . import TinyFamily, fill_dt_bias, register


def build(values: dict, vision: bool):
    layer_types = ["hybrid" if kind == "full_attention" else kind for kind in values["layer_types"]]
    config = Zamba2Config(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        intermediate_size=128,
        num_hidden_layers=values["num_hidden_layers"],
        layers_block_type=layer_types,
        num_attention_heads=values["num_attention_heads"],
        num_key_value_heads=values["num_key_value_heads"],
        n_mamba_heads=values["linear_num_value_heads"],
        mamba_ngroups=values["linear_num_key_heads"],
        mamba_d_state=values["linear_key_head_dim"],
        mamba_expand=values["linear_num_value_heads"] * values["linear_value_head_dim"] // values["hidden_size"],
        mamba_d_conv=values["linear_conv_kernel_dim"],
        max_position_embeddings=values["max_position_embeddings"],
        eos_token_id=0,
        pad_token_id=None,
        bos_token_id=None,
    )
    return fill_dt_bias(Zamba2ForCausalLM(config), 1.0)  # softplus(1) = 1.31, as the GDN families' default


register(TinyFamily("zamba2", build))
