"""Falcon-H1: every decoder layer "hybrid" (attention and a Mamba2 mixer in parallel), mixers of 8 heads of dim 16 in
2 groups, state size 16 (the shared geometry's 8 value heads over 2 key heads); the plans address layers 0, 1 and 3
and leave layer 2 as it is. Distinct `ssm_multipliers` and a non-unit `ssm_in_multiplier`, so a mixer using the wrong
`mup_vector` rows computes something else, and large enough that a head moves the logits by ~1e-2 even without the
norm (with the stock multipliers a tiny random mixer's output is ~1e-4).

The tiny model has the gated norm (`mamba_rms_norm=True`, the gate after it: `mamba_norm_before_gate=True`), as the
shared SSD tests expect a norm that couples a group's heads; the config's default, no norm (y * silu(z)), is
`build_tiny_model("falcon_h1", mamba_rms_norm=False)`, tested in tests/test_family_falcon_h1.py."""

from transformers import FalconH1Config, FalconH1ForCausalLM

from . import TinyFamily, fill_dt_bias, register

SSM_MULTIPLIERS = [4.0, 3.0, 2.5, 2.0, 0.5]  # z, x, B, C, dt rows of in_proj


def build(values: dict, vision: bool):
    heads, head_dim = values["linear_num_value_heads"], values["linear_value_head_dim"]
    config = FalconH1Config(
        vocab_size=values["vocab_size"],
        hidden_size=values["hidden_size"],
        intermediate_size=128,
        num_hidden_layers=values["num_hidden_layers"],
        num_attention_heads=values["num_attention_heads"],
        num_key_value_heads=values["num_key_value_heads"],
        mamba_n_heads=heads,
        mamba_d_ssm=heads * head_dim,
        mamba_d_head="auto",
        mamba_n_groups=values["linear_num_key_heads"],
        mamba_d_state=values["linear_key_head_dim"],
        mamba_d_conv=values["linear_conv_kernel_dim"],
        mamba_rms_norm=values.get("mamba_rms_norm", True),
        mamba_norm_before_gate=values.get("mamba_norm_before_gate", True),
        ssm_multipliers=SSM_MULTIPLIERS,
        ssm_in_multiplier=1.5,
        max_position_embeddings=values["max_position_embeddings"],
        eos_token_id=0,
        pad_token_id=None,
        bos_token_id=None,
    )
    return fill_dt_bias(FalconH1ForCausalLM(config), 1.0)  # softplus(1) = 1.31, as the GDN families' default


register(TinyFamily("falcon_h1", build))
