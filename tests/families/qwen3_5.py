"""Qwen3.5 dense and MoE; their public checkpoints are vision-language models (`*ForConditionalGeneration`)."""

from transformers import (
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
)

from . import MOE, VISION, VISION_TOKENS, TinyFamily, register


def build_dense(values: dict, vision: bool):
    text = Qwen3_5TextConfig(intermediate_size=128, **values)
    if vision:
        return Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=VISION, **VISION_TOKENS))
    return Qwen3_5ForCausalLM(text)


def build_moe(values: dict, vision: bool):
    text = Qwen3_5MoeTextConfig(**MOE, **values)
    if vision:
        config = Qwen3_5MoeConfig(text_config=text, vision_config=VISION, **VISION_TOKENS)
        return Qwen3_5MoeForConditionalGeneration(config)
    return Qwen3_5MoeForCausalLM(text)


register(TinyFamily("qwen3_5", build_dense, vision=True))
register(TinyFamily("qwen3_5_moe", build_moe, vision=True))
