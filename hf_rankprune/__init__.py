"""hf_rankprune: state-rank analysis and head pruning for linear-attention LLMs (`supported_model_types()`).

Importing the package registers every family's ragged-pruned model types with transformers' Auto classes (the
adapters' registry, `hf_rankprune.arch`), so `AutoModelForCausalLM.from_pretrained` loads pruned checkpoints.
"""

from .arch import AdapterError, get_adapter, model_geometry, supported_model_types
from .calibrate import CalibrationError, NonFiniteStateError, calibrate, observe_states
from .config import ConfigError, RankPruneConfig
from .data import (
    BUILTIN_CATEGORIES,
    CalibrationDataError,
    CalibrationSamples,
    TextSource,
    describe_samples,
    load_calibration_samples,
)
from .errors import RankPruneError
from .loading import quiet_gpu_kernel_notices_on_cpu
from .output_scores import importance_scores
from .plan import LayerPlan, PlanError, PrunePlan
from .pruner import RankPruner, RunResult
from .recipe import Recipe, RecipeError, check_architecture, load_recipe
from .report import analyze, write_report
from .scoring import head_scores, plan_from_scores, plan_from_stats
from .stats import RankStats, StatsError
from .surgery import apply_plan, model_plan, save_pruned
from .training import RankPruneCallback, apply_recipe
from .version import __version__

quiet_gpu_kernel_notices_on_cpu()  # CPU users are not told to install GPU-only kernels

__all__ = [
    "BUILTIN_CATEGORIES",
    "AdapterError",
    "CalibrationDataError",
    "CalibrationError",
    "CalibrationSamples",
    "ConfigError",
    "LayerPlan",
    "NonFiniteStateError",
    "PlanError",
    "PrunePlan",
    "RankPruneConfig",
    "RankPruneError",
    "RankPruneCallback",
    "RankPruner",
    "Recipe",
    "RecipeError",
    "RunResult",
    "RankStats",
    "StatsError",
    "TextSource",
    "__version__",
    "analyze",
    "apply_plan",
    "apply_recipe",
    "calibrate",
    "check_architecture",
    "describe_samples",
    "get_adapter",
    "model_geometry",
    "head_scores",
    "importance_scores",
    "load_calibration_samples",
    "load_recipe",
    "model_plan",
    "observe_states",
    "plan_from_scores",
    "plan_from_stats",
    "save_pruned",
    "supported_model_types",
    "write_report",
]
