"""Lara-4-Mini (MoE): sliding-window attention layers where the other families have full attention."""

from transformers import LaraMiniConfig, LaraMiniForCausalLM

from . import MOE, TinyFamily, register


def build(values: dict, vision: bool):
    layer_types = ["sliding_attention" if kind == "full_attention" else kind for kind in values["layer_types"]]
    values = {"sliding_window": 8, "eos_token_id": 0, **values, "layer_types": layer_types}
    return LaraMiniForCausalLM(LaraMiniConfig(**MOE, **values))


register(TinyFamily("lara_mini", build))
