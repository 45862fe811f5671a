"""Mamba2: a mixer in every layer (8 heads of dim 16 in 2 groups, state 16: expand 2 on hidden 64), no attention; the
plans address layers 0, 1 and 3 and leave layer 2 as it is. Its config derives the mixer width from hidden_size *
expand."""

from transformers import Mamba2Config, Mamba2ForCausalLM

from . import TinyFamily, fill_dt_bias, register


def build(values: dict, vision: bool):
    config = Mamba2Config(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        num_hidden_layers=values["num_hidden_layers"],
        num_heads=values["linear_num_value_heads"],
        n_groups=values["linear_num_key_heads"],
        head_dim=values["linear_value_head_dim"],
        state_size=values["linear_key_head_dim"],
        expand=values["linear_num_value_heads"] * values["linear_value_head_dim"] // values["hidden_size"],
        conv_kernel=values["linear_conv_kernel_dim"],
        eos_token_id=0,
        pad_token_id=None,
        bos_token_id=None,
    )
    return fill_dt_bias(Mamba2ForCausalLM(config), 1.0)  # softplus(1) = 1.31, as the GDN families' default


register(TinyFamily("mamba2", build))
