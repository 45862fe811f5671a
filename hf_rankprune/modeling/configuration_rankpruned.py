"""Configs of models pruned by hf_rankprune with a per-layer ("ragged") plan.

Self-contained (imports transformers only): this file is also copied next to pruned checkpoints so that
`trust_remote_code=True` loads them without hf_rankprune installed; the copy ends with the line that defines the
checkpoint's config class. A ragged config is the stock one under its own `model_type` (`<stock model_type>_rankpruned`);
the plan lives in the language model's config as `rankprune_plan` (a dict, see `hf_rankprune.plan.PrunePlan.to_dict`),
and the stock head counts stay those of the original model. Vision-language configs keep their stock `text_config`
(which carries the plan): only the outer model type changes, so the vision tower and the language model load as usual.
"""

from __future__ import annotations

RANKPRUNED_SUFFIX = "_rankpruned"


def rankpruned_config_class(stock_config_class: type) -> type:
    """The ragged-pruned config class of `stock_config_class` (e.g. `Qwen3_5TextConfig` ->
    `Qwen3_5TextRankPrunedConfig`, model type `qwen3_5_text_rankpruned`)."""
    name = stock_config_class.__name__.removesuffix("Config") + "RankPrunedConfig"
    model_type = stock_config_class.model_type + RANKPRUNED_SUFFIX
    return type(name, (stock_config_class,), {"model_type": model_type, "__module__": __name__})
