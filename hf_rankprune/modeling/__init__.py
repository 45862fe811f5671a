"""Model classes of ragged-pruned checkpoints, made from the stock classes their family's adapter names.

The adapters' registry (`hf_rankprune.arch.registry`) makes each ragged config/model pair with the factories here
and registers it with transformers' Auto classes at import, so `AutoModelForCausalLM.from_pretrained` (or
`AutoModelForImageTextToText` for vision-language checkpoints) loads checkpoints whose `model_type` is
`<stock model_type>_rankpruned`. `write_remote_code` puts the self-contained code next to such a checkpoint, for
`trust_remote_code=True` loading without hf_rankprune.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .configuration_rankpruned import RANKPRUNED_SUFFIX, rankpruned_config_class
from .modeling_rankpruned import (
    LAYER_OPTIONS_KEY,
    PLAN_CONFIG_KEY,
    RankPrunedGatedDeltaNet,
    RankPrunedRMSNormGated,
    build_pruned_layers,
    rankpruned_kda_layer_class,
    rankpruned_model_class,
    rankpruned_ssd_layer_class,
    register_conversion_mapping,
)

__all__ = [
    "LAYER_OPTIONS_KEY",
    "PLAN_CONFIG_KEY",
    "RANKPRUNED_SUFFIX",
    "RankPrunedGatedDeltaNet",
    "RankPrunedRMSNormGated",
    "build_pruned_layers",
    "rankpruned_config_class",
    "rankpruned_kda_layer_class",
    "rankpruned_ssd_layer_class",
    "rankpruned_model_class",
    "register_conversion_mapping",
    "write_remote_code",
]

_HERE = Path(__file__).resolve().parent
# the torch reference kernels the copied modeling file falls back to without hf_rankprune: {copy's name: source}
KERNEL_FILES = {
    "rankprune_gated_delta_rule_naive.py": "gated_delta_rule/naive.py",
    "rankprune_kimi_delta_attention_naive.py": "kimi_delta_attention/naive.py",
    "rankprune_mamba2_ssd_naive.py": "mamba2_ssd/naive.py",
}


def write_remote_code(folder: Path, model_class: type) -> dict[str, str]:
    """Write the code `trust_remote_code=True` loads `model_class` (a ragged-pruned class) with into `folder`: the
    generic files, each ending with the lines that define this checkpoint's classes. Returns the `auto_map` entries
    of the config and the model (the model's Auto class is the caller's to name)."""
    config_class = model_class.config_class
    stock_config, stock_model = config_class.__mro__[1], model_class.__mro__[1]
    layer_class, layer_attribute = model_class.ragged_layer_class, model_class.ragged_layer_attribute
    config_tail = (
        f"\n\n# the config class of this checkpoint\n"
        f"from {stock_config.__module__} import {stock_config.__name__}  # noqa: E402\n\n"
        f"{config_class.__name__} = rankpruned_config_class({stock_config.__name__})\n"
    )
    stock_layer = getattr(layer_class, "stock_layer_class", None)  # a ragged layer made from its stock class
    layer_lines = (
        f"from {stock_layer.__module__} import {stock_layer.__name__}  # noqa: E402\n\n"
        f"{layer_class.__name__} = {layer_class.layer_factory}({stock_layer.__name__})\n"
        if stock_layer is not None
        else ""
    )
    model_tail = (
        f"\n\n# the model class of this checkpoint\n{layer_lines}"
        f"from {stock_model.__module__} import {stock_model.__name__}  # noqa: E402\n\n"
        f"from .configuration_rankpruned import {config_class.__name__}  # noqa: E402\n\n"
        f"{model_class.__name__} = rankpruned_model_class(\n"
        f"    {stock_model.__name__}, {config_class.__name__}, {layer_attribute!r}, {layer_class.__name__}\n)\n"
        f"register_conversion_mapping({config_class.__name__})\n"
    )
    for name, tail in (("configuration_rankpruned.py", config_tail), ("modeling_rankpruned.py", model_tail)):
        (folder / name).write_text((_HERE / name).read_text(encoding="utf-8") + tail, encoding="utf-8")
    for name, source in KERNEL_FILES.items():
        shutil.copyfile(_HERE.parent / "kernels" / source, folder / name)
    return {
        "AutoConfig": f"configuration_rankpruned.{config_class.__name__}",
        "model": f"modeling_rankpruned.{model_class.__name__}",
    }
