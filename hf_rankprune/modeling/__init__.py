"""Model classes of ragged-pruned checkpoints, registered with transformers' Auto classes at import.

`import hf_rankprune.modeling` (done by `import hf_rankprune`) makes `AutoConfig` / `AutoModelForCausalLM` load
checkpoints whose `model_type` is `<stock model_type>_rankpruned`. `REMOTE_CODE_FILES` lists the self-contained files
copied next to such checkpoints for `trust_remote_code=True` loading without hf_rankprune.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_rankpruned import (
    Qwen3_5MoeTextRankPrunedConfig,
    Qwen3_5TextRankPrunedConfig,
    Qwen3NextRankPrunedConfig,
)
from .modeling_rankpruned import (
    Qwen3_5MoeTextRankPrunedForCausalLM,
    Qwen3_5TextRankPrunedForCausalLM,
    Qwen3NextRankPrunedForCausalLM,
    RankPrunedGatedDeltaNet,
    RankPrunedRMSNormGated,
)

__all__ = [
    "PRUNED_CLASSES",
    "Qwen3NextRankPrunedConfig",
    "Qwen3NextRankPrunedForCausalLM",
    "Qwen3_5MoeTextRankPrunedConfig",
    "Qwen3_5MoeTextRankPrunedForCausalLM",
    "Qwen3_5TextRankPrunedConfig",
    "Qwen3_5TextRankPrunedForCausalLM",
    "RankPrunedGatedDeltaNet",
    "RankPrunedRMSNormGated",
    "remote_code_files",
]

# stock CausalLM class -> (its ragged-pruned config class, model class)
PRUNED_CLASSES = {
    Qwen3NextRankPrunedForCausalLM.__mro__[1]: (Qwen3NextRankPrunedConfig, Qwen3NextRankPrunedForCausalLM),
    Qwen3_5TextRankPrunedForCausalLM.__mro__[1]: (Qwen3_5TextRankPrunedConfig, Qwen3_5TextRankPrunedForCausalLM),
    Qwen3_5MoeTextRankPrunedForCausalLM.__mro__[1]: (
        Qwen3_5MoeTextRankPrunedConfig,
        Qwen3_5MoeTextRankPrunedForCausalLM,
    ),
}

_HERE = Path(__file__).resolve().parent


def remote_code_files() -> dict[str, Path]:
    """{file name in a checkpoint folder: source file} of the code `trust_remote_code=True` loads."""
    return {
        "configuration_rankpruned.py": _HERE / "configuration_rankpruned.py",
        "modeling_rankpruned.py": _HERE / "modeling_rankpruned.py",
        "rankprune_gated_delta_rule_naive.py": _HERE.parent / "kernels" / "gated_delta_rule" / "naive.py",
    }


def _register() -> None:
    for config_class, model_class in PRUNED_CLASSES.values():
        try:
            AutoConfig.register(config_class.model_type, config_class)
        except ValueError:  # already registered (module reloaded)
            pass
        try:
            AutoModelForCausalLM.register(config_class, model_class)
        except ValueError:
            pass


_register()
