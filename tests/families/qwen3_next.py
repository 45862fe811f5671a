from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

from . import MOE, TinyFamily, register


def build(values: dict, vision: bool):
    return Qwen3NextForCausalLM(Qwen3NextConfig(intermediate_size=128, **MOE, **values))


register(TinyFamily("qwen3_next", build))
