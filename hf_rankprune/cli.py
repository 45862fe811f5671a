"""The `hf-rankprune` command line.

Every command checks its inputs before doing any work; a bad input prints one `error: ...` line and exits with 2,
leaving nothing written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import ConfigError, RankPruneConfig
from .loading import DEMO_MODEL_NAME, ModelLoadError, load_model_and_tokenizer, resolve_model_path


class UsageError(ValueError):
    """A command-line input is wrong; the message says what and how to fix it."""


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help=f"local model folder or Hub id (default: the embedded demo model, {DEMO_MODEL_NAME})",
    )
    parser.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' (default: CPU)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")


def _add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RankPruneConfig()
    parser.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="SPEC",
        help="calibration data: a .txt/.jsonl/.parquet file, 'builtin', 'builtin:<category>' or 'hf:<dataset>' "
        "(repeatable; default: the built-in offline context suite)",
    )
    parser.add_argument("--num-samples", type=int, default=None, help=f"default {defaults.num_samples}")
    parser.add_argument("--seq-len", type=int, default=None, help=f"default {defaults.seq_len}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {defaults.batch_size}")
    parser.add_argument("--grid-step", type=int, default=None, help=f"default {defaults.grid_step}")
    parser.add_argument("--rank-eps", type=float, default=None, help=f"default {defaults.rank_eps}")
    parser.add_argument("--seed", type=int, default=None, help=f"default {defaults.seed}")


def _config_from_args(args: argparse.Namespace, base: RankPruneConfig | None = None) -> RankPruneConfig:
    names = {
        "num_samples": "num_samples",
        "seq_len": "seq_len",
        "batch_size": "batch_size",
        "grid_step": "grid_step",
        "rank_eps": "rank_eps",
        "seed": "seed",
        "data": "data",
    }
    overrides = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}
    return (base or RankPruneConfig()).replace(**overrides)


def _analyze(args: argparse.Namespace) -> int:
    from .calibrate import calibrate
    from .data import load_calibration_samples
    from .report import write_report
    from .utils import atomic_output_dir, check_output_dir

    config = _config_from_args(args)
    check_output_dir(args.out, args.overwrite)
    model_path = resolve_model_path(args.model)
    model, tokenizer = load_model_and_tokenizer(model_path, device_map=args.device_map, dtype=args.dtype)
    samples = load_calibration_samples(config.data, tokenizer, config.num_samples, config.seq_len, config.seed)
    stats = calibrate(model, samples, config, progress=not args.quiet, model_name=str(args.model or DEMO_MODEL_NAME))
    with atomic_output_dir(args.out, args.overwrite) as staging:
        analysis = write_report(stats, staging)
    strat, stab = analysis["stratification"], analysis["stability"]
    print(
        f"{strat['low_heads']} low-rank and {strat['high_heads']} high-rank heads of {strat['total_heads']}; "
        f"Spearman early/late {stab['spearman_rank_early_vs_late']:.3f}. Report: {args.out}/report.md"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-rankprune",
        description="State-rank analysis and head pruning for linear-attention LLMs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser(
        "analyze",
        help="calibrate per-head state ranks and write the stratification/stability report with figures",
    )
    _add_model_arguments(analyze)
    _add_calibration_arguments(analyze)
    analyze.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    analyze.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    analyze.add_argument("--quiet", action="store_true", help="no progress bar")
    analyze.set_defaults(handler=_analyze)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (reported as one line), as opposed to bugs (shown with a traceback)."""
    from .arch import AdapterError
    from .calibrate import CalibrationError
    from .data import CalibrationDataError
    from .stats import StatsError
    from .utils import OutputExistsError

    return (
        UsageError,
        ConfigError,
        ModelLoadError,
        AdapterError,
        CalibrationError,
        CalibrationDataError,
        StatsError,
        OutputExistsError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except user_errors() as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
