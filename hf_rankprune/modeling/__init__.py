"""Model classes of ragged-pruned checkpoints, registered with transformers' Auto classes at import.

`import hf_rankprune.modeling` (done by `import hf_rankprune`) makes `AutoConfig` and the model's own Auto class
(`AutoModelForCausalLM`, or `AutoModelForImageTextToText` for vision-language checkpoints) load checkpoints whose
`model_type` is `<stock model_type>_rankpruned`. `remote_code_files()` lists the self-contained files copied next to
such checkpoints for `trust_remote_code=True` loading without hf_rankprune.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from .configuration_rankpruned import (
    Qwen3_5MoeRankPrunedConfig,
    Qwen3_5MoeTextRankPrunedConfig,
    Qwen3_5RankPrunedConfig,
    Qwen3_5TextRankPrunedConfig,
    Qwen3NextRankPrunedConfig,
)
from .modeling_rankpruned import (
    Qwen3_5MoeRankPrunedForConditionalGeneration,
    Qwen3_5MoeTextRankPrunedForCausalLM,
    Qwen3_5RankPrunedForConditionalGeneration,
    Qwen3_5TextRankPrunedForCausalLM,
    Qwen3NextRankPrunedForCausalLM,
    RankPrunedGatedDeltaNet,
    RankPrunedRMSNormGated,
)

__all__ = [
    "PRUNED_CLASSES",
    "Qwen3NextRankPrunedConfig",
    "Qwen3NextRankPrunedForCausalLM",
    "Qwen3_5MoeRankPrunedConfig",
    "Qwen3_5MoeRankPrunedForConditionalGeneration",
    "Qwen3_5MoeTextRankPrunedConfig",
    "Qwen3_5MoeTextRankPrunedForCausalLM",
    "Qwen3_5RankPrunedConfig",
    "Qwen3_5RankPrunedForConditionalGeneration",
    "Qwen3_5TextRankPrunedConfig",
    "Qwen3_5TextRankPrunedForCausalLM",
    "RankPrunedGatedDeltaNet",
    "RankPrunedRMSNormGated",
    "remote_code_files",
]

_PRUNED_MODEL_CLASSES = (
    Qwen3NextRankPrunedForCausalLM,
    Qwen3_5TextRankPrunedForCausalLM,
    Qwen3_5MoeTextRankPrunedForCausalLM,
    Qwen3_5RankPrunedForConditionalGeneration,
    Qwen3_5MoeRankPrunedForConditionalGeneration,
)
# stock model class -> (its ragged-pruned config class, model class); each pruned class derives from its stock one
PRUNED_CLASSES = {cls.__mro__[1]: (cls.config_class, cls) for cls in _PRUNED_MODEL_CLASSES}

_HERE = Path(__file__).resolve().parent


def _auto_class_name(model_class: type) -> str:
    """The Auto class to register `model_class` with (vision-language models keep theirs)."""
    if model_class.__name__.endswith("ForConditionalGeneration"):
        return "AutoModelForImageTextToText"
    return "AutoModelForCausalLM"


def remote_code_files() -> dict[str, Path]:
    """{file name in a checkpoint folder: source file} of the code `trust_remote_code=True` loads."""
    return {
        "configuration_rankpruned.py": _HERE / "configuration_rankpruned.py",
        "modeling_rankpruned.py": _HERE / "modeling_rankpruned.py",
        "rankprune_gated_delta_rule_naive.py": _HERE.parent / "kernels" / "gated_delta_rule" / "naive.py",
    }


def _register() -> None:
    auto_classes = {
        "AutoModelForCausalLM": AutoModelForCausalLM,
        "AutoModelForImageTextToText": AutoModelForImageTextToText,
    }
    for config_class, model_class in PRUNED_CLASSES.values():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        try:
            auto_classes[_auto_class_name(model_class)].register(config_class, model_class)
        except ValueError:  # already registered (module reloaded)
            pass


_register()
