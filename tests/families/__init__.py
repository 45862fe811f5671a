"""Tiny real models of every supported family, one file per family (adding a family adds a file here, nothing else).

Each file registers a `TinyFamily`: how to build a randomly initialised model of the family from the shared tiny
geometry (`COMMON`: 4 decoder layers, linear attention at 0, 1 and 3, 2 key heads x 8 value heads of dim 16, so
every plan of tests/_pruning_reference.py applies), and whether it has a vision-language form.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=8,
    layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
    max_position_embeddings=4096,
)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
VISION = dict(  # a tiny vision tower (the Qwen vision-language forms)
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


@dataclass(frozen=True)
class TinyFamily:
    name: str
    build: Callable[[dict, bool], nn.Module]  # (config values over COMMON, vision-language form?) -> model
    vision: bool = False  # has a vision-language form
    causal_lm: bool = True  # has a text-only CausalLM form (GLM-5 Next has only its vision-language model)

    @property
    def forms(self) -> tuple[bool, ...]:
        """The forms the family has, as `vision` flags: text-only and/or vision-language."""
        return (False,) * self.causal_lm + (True,) * self.vision


FAMILIES: dict[str, TinyFamily] = {}


def fill_dt_bias(model: nn.Module, value: float) -> nn.Module:
    """Set every `dt_bias` (KDA forget gates, SSD mixers) to `value`: the stock draw (softplus in [0.001, 0.1]) makes
    every head of a tiny random model keep a full-rank state; with `value` the heads' decays follow their spread
    `A_log` (tests/conftest.py), as in trained models."""
    for name, param in model.named_parameters():
        if name.endswith("dt_bias"):
            param.data.fill_(value)
    return model


def register(family: TinyFamily) -> TinyFamily:
    if family.name in FAMILIES:
        raise ValueError(f"tiny family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
