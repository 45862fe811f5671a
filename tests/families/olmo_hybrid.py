"""Olmo-Hybrid: separate q/k/v/g/a/b projections, beta x2 (`linear_allow_neg_eigval`), a gated norm with eps 1e-5, and
value heads wider than key heads (24 against 16 in the shared geometry, as the released checkpoint has d_v = 2 d_k), so
the on-disk q/k/v conv pieces differ in size. Its A_log comes from tests/conftest.py like every family's."""

from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

from . import TinyFamily, register


def build(values: dict, vision: bool):
    values = {"intermediate_size": 128, "eos_token_id": 0, "pad_token_id": None, "linear_allow_neg_eigval": True,
              # softplus(dt_bias) drawn in [1, 1.5], as the other families' dt_bias = 1 gives 1.31 (the stock draw, in
              # [0.001, 0.1], would make every head of the tiny model keep a full-rank state)
              "linear_dt_min": 1.0, "linear_dt_max": 1.5, **values}  # fmt: skip
    if values["linear_value_head_dim"] == values["linear_key_head_dim"]:
        values["linear_value_head_dim"] = values["linear_key_head_dim"] * 3 // 2
    return OlmoHybridForCausalLM(OlmoHybridConfig(**values))


register(TinyFamily("olmo_hybrid", build))
