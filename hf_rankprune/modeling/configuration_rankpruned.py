"""Configs of models pruned by hf_rankprune with a per-layer ("ragged") plan.

Self-contained (imports transformers only): this file is also copied next to pruned checkpoints so that
`trust_remote_code=True` loads them without hf_rankprune installed. The configs are the stock ones under their own
`model_type` (`<stock model_type>_rankpruned`); the plan lives in the language model's config as `rankprune_plan` (a
dict, see `hf_rankprune.plan.PrunePlan.to_dict`), and the stock head counts (`linear_num_value_heads` /
`linear_num_key_heads`) stay those of the original model. Vision-language configs keep their stock `text_config`
(which carries the plan): only the outer model type changes, so the vision tower and the language model load as usual.
"""

from __future__ import annotations

from transformers import (
    Qwen3_5Config,
    Qwen3_5MoeConfig,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
    Qwen3NextConfig,
)

RANKPRUNED_SUFFIX = "_rankpruned"


class Qwen3NextRankPrunedConfig(Qwen3NextConfig):
    model_type = "qwen3_next_rankpruned"


class Qwen3_5TextRankPrunedConfig(Qwen3_5TextConfig):
    model_type = "qwen3_5_text_rankpruned"


class Qwen3_5MoeTextRankPrunedConfig(Qwen3_5MoeTextConfig):
    model_type = "qwen3_5_moe_text_rankpruned"


class Qwen3_5RankPrunedConfig(Qwen3_5Config):
    model_type = "qwen3_5_rankpruned"


class Qwen3_5MoeRankPrunedConfig(Qwen3_5MoeConfig):
    model_type = "qwen3_5_moe_rankpruned"
