"""The `hf-rankprune` command line.

Every command checks its inputs and its output path before doing any work; a bad input prints one `error: ...` line
and exits with 2, leaving nothing written. A runtime fault (disk full, I/O error, out of memory) exits with 1, Ctrl-C
with 130 and SIGTERM with 143, each with one `error:` line, after removing the unfinished output.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import CALIBRATION, PRUNING, RankPruneConfig, cli_flag
from .errors import RankPruneError, UsageError
from .loading import DEMO_MODEL_NAME, load_model_and_tokenizer, resolve_model_path
from .version import __version__

if TYPE_CHECKING:
    from .recovery import RecoveryConfig


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help=f"local model folder or Hub id (default: the embedded demo model, {DEMO_MODEL_NAME})",
    )
    parser.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' (default: CPU)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")


def _add_setting_arguments(parser: argparse.ArgumentParser, group: str) -> None:
    """One flag per RankPruneConfig field of the command-line `group` (config.CALIBRATION or config.PRUNING), with
    the field's help, choices and default. Every default is None here, so that only given flags override."""
    from .config import DEMO_CALIBRATION, settings_in, value_type

    defaults = RankPruneConfig()
    for spec in settings_in(cli=group):
        kind = value_type(spec)
        default = getattr(defaults, spec.name)
        shown_default = "" if default is None or default is False or default == [] else f"default {default}"
        if DEMO_CALIBRATION.get(spec.name, default) != default:
            shown_default += f"; {DEMO_CALIBRATION[spec.name]} for the demo model"
        help_text = spec.metadata["help"] + (f" ({shown_default})" if shown_default else "")
        argument: dict = {"default": None, "help": help_text.replace("%", "%%")}
        if kind is bool:
            argument["action"] = "store_true"
        elif kind == list[str]:
            argument.update(action="append", metavar=spec.metadata["metavar"])
        elif kind == list[int]:
            argument["metavar"] = spec.metadata["metavar"]  # comma-separated, read by _config_from_args
        else:
            argument.update(type=kind, choices=spec.metadata["choices"])
        parser.add_argument(cli_flag(spec.name), **argument)


def _config_from_args(args: argparse.Namespace, base: RankPruneConfig | None = None) -> RankPruneConfig:
    """`base` (default: the settings for MODEL, see `pruner.default_config`) with the given setting flags applied;
    a budget flag replaces the base's budget, and an importance --score without --direction its direction."""
    from .config import IMPORTANCE_SCORES, SETTINGS, check_one_budget, value_type

    overrides = {}
    for spec in SETTINGS:
        value = getattr(args, spec.name, None)
        if value is not None and value_type(spec) == list[int]:
            value = _int_list(value, cli_flag(spec.name))
        if value is not None:
            overrides[spec.name] = value
    check_one_budget(overrides, name=cli_flag)
    if overrides.get("score") in IMPORTANCE_SCORES and "direction" not in overrides:
        overrides["direction"] = None  # the importance score's own direction, not a recipe's written for ranks
    if base is None:  # the embedded demo model gets its recipe's calibration size (16 x 512), other models 64 x 2048
        from .pruner import default_config

        base = default_config(resolve_model_path(getattr(args, "model", None)))
    return base.replace(**overrides)


def _run_inputs(args: argparse.Namespace, model_path: str | None, config: RankPruneConfig | None = None) -> list:
    """Every local path the run reads (model folder, --stats, --recipe, --data files): outputs may not overlap them."""
    paths = [model_path, getattr(args, "stats", None), getattr(args, "recipe", None)]
    for spec in (config.data if config is not None else None) or ():
        if isinstance(spec, str) and not spec.startswith(("hf:", "builtin")):
            paths.append(spec)
    return paths


def _analyze(args: argparse.Namespace) -> int:
    from .calibrate import calibrate
    from .data import load_calibration_samples
    from .report import write_report
    from .utils import atomic_output_dir, check_output_dir

    config = _config_from_args(args)
    model_path = resolve_model_path(args.model)
    inputs = _run_inputs(args, model_path, config)
    check_output_dir(args.out, args.overwrite, inputs)
    _check_seq_len(config.seq_len, model_path)
    model, tokenizer = load_model_and_tokenizer(model_path, device_map=args.device_map, dtype=args.dtype)
    samples = load_calibration_samples(config.data, tokenizer, config.num_samples, config.seq_len, config.seed)
    stats = calibrate(model, samples, config, progress=not args.quiet, model_name=str(args.model or DEMO_MODEL_NAME))
    from .output_scores import decay_scores

    decay = decay_scores(model, progress=False, verbose=False).scores  # data-free: correlated with the rank
    with atomic_output_dir(args.out, args.overwrite, inputs) as staging:
        analysis = write_report(stats, staging, decay=decay)
    strat, stab = analysis["stratification"], analysis["stability"]
    print(
        f"{strat['low_heads']} low-rank and {strat['high_heads']} high-rank heads of {strat['total_heads']}; "
        f"Spearman early/late {stab['spearman_rank_early_vs_late']:.3f}; decay score vs rank "
        f"{analysis['decay']['spearman_with_mean_rank']:.3f}. Report: {args.out}/report.md"
    )
    return 0


def _check_seq_len(seq_len: int, model_path: str) -> None:
    """Calibration samples must fit the model's positions, as `eval --lengths` must (checked on the config, before
    any weight is loaded)."""
    from .loading import load_config

    limit = getattr(load_config(model_path).get_text_config(), "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise UsageError(f"--seq-len {seq_len} goes beyond the model's context (max_position_embeddings={limit}).")


def _prune_recipe(args: argparse.Namespace):
    """With --recipe: the recipe, after filling MODEL and --out from it (flags win) and checking the model's
    architecture against it before any weight is read; None without --recipe."""
    recipe = None
    if args.recipe is not None:
        from .loading import load_config
        from .recipe import check_architecture, load_recipe

        recipe = load_recipe(args.recipe)
        args.model = args.model if args.model is not None else recipe.model
        args.out = args.out if args.out is not None else recipe.output_dir
    if args.out is None:
        raise UsageError("No output folder: give --out DIR (or output_dir: in the --recipe).")
    if recipe is not None:
        check_architecture(recipe, load_config(resolve_model_path(args.model)))
    return recipe


def _prune(args: argparse.Namespace) -> int:
    """Parse, check every input before any work, then `RankPruner.from_recipe(...)` / `from_pretrained(...)` and
    `run()`; print what was done."""
    import dataclasses
    import warnings

    from .pruner import RankPruner
    from .scoring import UniformRoundingWarning
    from .stats import RankStats
    from .utils import check_output_dir

    recipe = _prune_recipe(args)
    config = _config_from_args(args, recipe.config if recipe else None)
    model_path = resolve_model_path(args.model)
    check_output_dir(args.out, args.overwrite, _run_inputs(args, model_path, config))
    if args.stats and not config.needs_rank_stats():
        print(f"Note: --score {config.score} does not use rank statistics; --stats {args.stats} is not read.")
        args.stats = None
    stats = RankStats.from_json_file(args.stats) if args.stats else None
    if stats is None:
        _check_seq_len(config.seq_len, model_path)
    loading = {"device_map": args.device_map, "torch_dtype": args.dtype, "base_model": args.base_model}
    with warnings.catch_warnings():  # the uniform budget's choice is printed below
        warnings.simplefilter("ignore", UniformRoundingWarning)
        if recipe is None:
            pruner = RankPruner.from_pretrained(args.model, config, **loading)
        else:  # the recipe's evaluation is checked against the model's context before any weight is read
            evaluation = _recipe_evaluation(recipe, model_path)
            recipe = dataclasses.replace(recipe, config=config, evaluation=evaluation)  # flags applied: the card shows it
            pruner = RankPruner.from_recipe(recipe, args.model, **loading)
    if pruner.uniform_choice is not None:  # which head count a uniform budget takes, and why, before any work
        print(pruner.uniform_choice.message(), flush=True)
    if stats is not None:
        pruner.load_stats(stats)
    result = pruner.run(args.out, overwrite=args.overwrite, progress=not args.quiet)
    plan = result.plan
    memory = plan.memory(context_length=config.seq_len)
    print(
        f"Removed {plan.settings['removed_value_heads']} of {plan.settings['total_value_heads']} value heads "
        f"({'uniform' if plan.is_uniform else 'ragged'} plan); linear state {memory.state_bytes_before} -> "
        f"{memory.state_bytes_after} bytes per sequence ({memory.state_reduction:.1%} less). Saved to {args.out}"
    )
    max_positions = getattr(pruner.model.config.get_text_config(), "max_position_embeddings", None) or 32_768
    print(_serving_summary(plan, args.server_memory_gib, min(32_768, int(max_positions))))
    if result.evaluation:
        from .evaluation import results_table

        print(results_table(result.evaluation))
    if result.commit is not None:
        print(f"Pushed to {result.commit.repo_url}: commit {result.commit.oid}")
    return 0


def _serving_summary(plan, memory_gib: float, context_length: int) -> str:
    """The layout written (what loads it) and the sequences that fit in `memory_gib` GiB of inference state."""
    from .integrations.serving import layout_summary

    rows = {(row["model"], row["state_dtype"]): row["sequences"]
            for row in plan.capacity(int(memory_gib * 2**30), context_length)}  # fmt: skip
    return (
        f"Layout: {layout_summary(plan)}\n"
        f"Sequences of {context_length} tokens in {memory_gib:g} GiB of state + KV cache: original "
        f"{rows['original', 'float32']:,} (bf16 state {rows['original', 'bfloat16']:,}), pruned "
        f"{rows['pruned', 'float32']:,} (bf16 state {rows['pruned', 'bfloat16']:,})."
    )


def _recipe_evaluation(recipe, model_path: str) -> dict | None:
    """The recipe's evaluation settings, checked by its tasks against the model's context before any weight is read."""
    if recipe is None or not recipe.evaluation:
        return None
    from .errors import EvaluationError
    from .evaluation.tasks import check_options, get_tasks, task_names
    from .loading import load_config
    from .utils import shown

    evaluation = dict(recipe.evaluation)
    evaluation.setdefault("tasks", list(task_names()))
    options = {key: value for key, value in evaluation.items() if key != "tasks"}
    limit = getattr(load_config(model_path).get_text_config(), "max_position_embeddings", None)
    try:
        check_options(options, get_tasks(evaluation["tasks"]), limit)
    except EvaluationError as error:
        raise UsageError(
            f"The recipe's evaluation.{error.option}={shown(evaluation.get(error.option))} is not allowed: "
            f"{error.reason}."
        ) from None
    return evaluation


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text[:50]!r} is not a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text[:50]!r} is not an integer >= 1")
    return value


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of integers.") from error


def _float_list(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of numbers.") from error


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default="512,1024", help="passkey context lengths in tokens (default 512,1024)")
    parser.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="passkey depths in [0, 1]")
    parser.add_argument("--num-keys", type=int, default=4,
                        help="passkeys per length and depth (default 4, as recipes/demo.yaml)")  # fmt: skip


def _eval_kwargs(args: argparse.Namespace, model_path: str, tasks: Sequence[str]) -> dict:
    """Evaluation settings from the flags, checked by the tasks against the model's config before any weight is
    loaded; a bad one is reported under its flag."""
    from .errors import EvaluationError
    from .evaluation.tasks import check_options, get_tasks
    from .loading import load_config

    options = {"lengths": _int_list(args.lengths, "--lengths"), "depths": _float_list(args.depths, "--depths"),
               "num_keys": args.num_keys}  # fmt: skip
    try:
        chosen = get_tasks(tasks)
        limit = getattr(load_config(model_path).get_text_config(), "max_position_embeddings", None)
        check_options(options, chosen, limit)
    except EvaluationError as error:
        raise UsageError(f"--{error.option.replace('_', '-')} {getattr(args, error.option)!r}: {error.reason}.") from None
    return options


def _eval(args: argparse.Namespace) -> int:
    import json

    from .evaluation import evaluate_model
    from .utils import atomic_write_text, check_output_file

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]  # checked by _eval_kwargs
    model_path = resolve_model_path(args.model)
    check_output_file(args.out, args.overwrite, _run_inputs(args, model_path))
    kwargs = _eval_kwargs(args, model_path, tasks)
    model, tokenizer = load_model_and_tokenizer(model_path, device_map=args.device_map, dtype=args.dtype)
    results = evaluate_model(model, tokenizer, tasks, progress=True, **kwargs)
    atomic_write_text(args.out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    from .evaluation import results_table

    print(results_table({"value": results}))
    return 0


def _probe(args: argparse.Namespace) -> int:
    from .config import DATA_SCORES
    from .data import load_calibration_samples
    from .probe import check_probe_scores, run_probe, write_probe
    from .pruner import RankPruner
    from .stats import RankStats
    from .utils import atomic_output_dir, check_output_dir

    text = args.scores.strip()
    try:
        scores = check_probe_scores([] if text.lower() == "none" else [s.strip() for s in text.split(",") if s.strip()])
    except ValueError as error:
        raise UsageError(f"--scores {args.scores!r}: {error}") from None
    config = _config_from_args(args)
    model_path = resolve_model_path(args.model)
    inputs = _run_inputs(args, model_path, config)
    check_output_dir(args.out, args.overwrite, inputs)
    seeds = _int_list(args.seeds, "--seeds")
    if not seeds:
        raise UsageError("--seeds: give at least one seed for the random control.")
    stats = RankStats.from_json_file(args.stats) if args.stats else None
    needs_samples = stats is None or any(score.removesuffix("_greedy") in DATA_SCORES for score in scores)
    if needs_samples:
        _check_seq_len(config.seq_len, model_path)
    eval_kwargs = _eval_kwargs(args, model_path, ["passkey"])
    pruner = RankPruner.from_pretrained(model_path, config, device_map=args.device_map, torch_dtype=args.dtype)
    samples = None  # the rank calibration's samples, also those the importance scores are measured on
    if needs_samples:
        samples = load_calibration_samples(config.data, pruner.tokenizer, config.num_samples, config.seq_len,
                                           config.seed)  # fmt: skip
    recover = None  # recover(model) -> model: recovery fine-tuning of every pruned variant (None: zero-shot only)
    if args.recover_steps is not None:
        from .pruner import is_demo_model
        from .recovery import DEMO_RECOVERY, RecoveryConfig, recovery_function

        recovery = RecoveryConfig(**DEMO_RECOVERY) if is_demo_model(model_path) else RecoveryConfig()
        recovery = recovery.replace(steps=args.recover_steps, seq_len=config.seq_len)  # the probe's sample length
        recover = recovery_function(pruner.model, pruner.tokenizer, recovery)
    if stats is None:
        stats = pruner.calibrate(samples, progress=not args.quiet)

    def fresh_model():
        return load_model_and_tokenizer(model_path, device_map=args.device_map, dtype=args.dtype)[0]

    result = run_probe(pruner.model, pruner.tokenizer, stats, config, num_heads=args.probe_heads, seeds=seeds,
                       scores=scores, samples=samples, recover=recover, model_factory=fresh_model,
                       eval_kwargs=eval_kwargs, progress=not args.quiet)  # fmt: skip
    with atomic_output_dir(args.out, args.overwrite, inputs) as staging:
        write_probe(result, staging)
        stats.to_json_file(staging / "rank_stats.json")
    print(result["verdict"])
    return 0


def add_recovery_arguments(parser: argparse.ArgumentParser, defaults: RecoveryConfig | None = None) -> None:
    """One flag per RecoveryConfig field (default None: only given flags override the recipe's or the defaults);
    the help shows `defaults` (a RecoveryConfig; the plain one when None)."""
    from .recovery import RECOVERY_SETTINGS, RecoveryConfig

    defaults = defaults if defaults is not None else RecoveryConfig()
    for spec in RECOVERY_SETTINGS:
        default = getattr(defaults, spec.name)
        shown_default = "" if default is None else f" (default {default})"
        argument: dict = {"default": None, "help": (spec.metadata["help"] + shown_default).replace("%", "%%")}
        if spec.name == "data":
            argument.update(action="append", metavar="SPEC")
        else:
            kind = type(default) if default is not None else int
            argument.update(type=kind, choices=spec.metadata["choices"])
        parser.add_argument(cli_flag(spec.name), **argument)


def given_recovery_settings(args: argparse.Namespace) -> dict:
    """The RecoveryConfig fields whose flags (`add_recovery_arguments`) were given on the command line."""
    from .recovery import RECOVERY_SETTINGS

    return {spec.name: getattr(args, spec.name) for spec in RECOVERY_SETTINGS if getattr(args, spec.name) is not None}


def _recover(args: argparse.Namespace) -> int:
    """Check every input (pruned model, teacher, output, settings) before any work, then `recovery.recover`."""
    from .recipe import load_recipe
    from .recovery import DEMO_RECOVERY, RecoveryConfig, recover, recovery_work_dir

    base = RecoveryConfig()
    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
        if recipe.recovery is None:
            raise UsageError(f"{args.recipe} has no recovery stage (recovery_stage: with a DistillationModifier).")
        base = recipe.recovery
    elif _is_demo_teacher(args):
        base = base.replace(**DEMO_RECOVERY)
    config = base.replace(**given_recovery_settings(args))
    try:
        result = recover(args.pruned_model, args.out, config, teacher=args.teacher, overwrite=args.overwrite,
                         device_map=args.device_map, progress=not args.quiet)  # fmt: skip
    except KeyboardInterrupt:
        _resume_hint(recovery_work_dir(args.out))
        raise
    except Terminated:
        _resume_hint(recovery_work_dir(args.out))
        raise
    info = result.info
    history = info["loss_history"]
    losses = f"; loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}" if history else ""
    print(f"Recovered {args.pruned_model} in {info['steps']} steps ({info['tokens_seen']:,} tokens, {info['seconds']} s"
          f"{losses}). Saved to {args.out}")  # fmt: skip
    return 0


def _is_demo_teacher(args: argparse.Namespace) -> bool:
    """The run distils the embedded demo model (recorded in the plan, no --teacher): it gets DEMO_RECOVERY's sizes."""
    from .loading import load_config
    from .plan import DEMO_ORIGINAL
    from .surgery import model_plan

    if args.teacher is not None:
        return False
    try:
        plan = model_plan(load_config(resolve_model_path(args.pruned_model)))
    except RankPruneError:
        return False  # recover() reports it
    return plan is not None and plan.original_model == DEMO_ORIGINAL


def _resume_hint(work) -> None:
    if work.is_dir():
        print(f"note: the checkpoints of this recovery are kept in {work}: rerun the same command to resume.",
              file=sys.stderr)  # fmt: skip


def _push(args: argparse.Namespace) -> int:
    """Push a saved (pruned) model folder to the Hub in one commit; the token is never printed."""
    from pathlib import Path

    from .hub import push_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder: give the output folder of `hf-rankprune prune`.")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder} holds no config.json: it is not a saved model (write it with `hf-rankprune prune`).")
    try:
        info = push_folder(folder, args.repo_id, private=True if args.private else None, token=args.token,
                           revision=args.revision, commit_message=args.commit_message, create_pr=args.create_pr)  # fmt: skip
    except ValueError as error:  # invalid repo id (checked before any request)
        raise UsageError(str(error)) from error
    where = f"pull request {info.pr_url}" if info.pr_url else f"commit {info.oid}"
    print(f"Pushed {folder} to {args.repo_id}: {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-rankprune",
        description="State-rank analysis and head pruning for linear-attention LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser(
        "analyze",
        help="calibrate per-head state ranks and write the stratification/stability report with figures",
        description="Run the model on calibration text and measure the effective rank and norm of every "
        "linear-attention head's state on a token grid; write rank_stats.json (reusable with --stats), "
        "report.md/report.json and figures/ into --out. Demo model: 16 x 512 tokens, seconds on a CPU.",
    )
    _add_model_arguments(analyze)
    _add_setting_arguments(analyze, CALIBRATION)
    analyze.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    analyze.add_argument("--overwrite", action="store_true", help="replace an earlier output of hf-rankprune there")
    analyze.add_argument("--quiet", action="store_true", help="no progress bar")
    analyze.set_defaults(handler=_analyze)

    prune = commands.add_parser("prune", help="calibrate, score and physically remove heads; save a loadable model",
                                description="Calibrate (or read --stats), score the heads, remove the chosen ones "
                                "from the weights and save a model folder that from_pretrained loads, with its plan "
                                "and model card. A --recipe also evaluates before/after and can push.")  # fmt: skip
    _add_model_arguments(prune)
    _add_setting_arguments(prune, CALIBRATION)
    _add_setting_arguments(prune, PRUNING)
    prune.add_argument("--stats", default=None, help="rank_stats.json from `analyze` (skips calibration)")
    prune.add_argument("--recipe", default=None, metavar="FILE",
                       help="YAML recipe with the model, calibration and pruning settings (flags override it)")
    prune.add_argument("--out", default=None, help="output model folder (must not exist or be empty; default: the "
                       "recipe's output_dir)")  # fmt: skip
    prune.add_argument("--overwrite", action="store_true", help="replace an earlier output of hf-rankprune there")
    prune.add_argument("--server-memory-gib", type=_positive_float, default=1.0, metavar="GIB",
                       help="GiB of inference state the summary counts concurrent sequences for (default 1)")
    prune.add_argument("--base-model", default=None, metavar="ID", help="Hub id the model card names as the base "
                       "model (default: MODEL's id, also for a folder of the Hub cache)")  # fmt: skip
    prune.add_argument("--quiet", action="store_true", help="no progress bar")
    prune.set_defaults(handler=_prune)
    evaluate = commands.add_parser("eval", help="perplexity, passkey accuracy, state memory and decode speed",
                                   description="Evaluate a model (pruned or not): perplexity on the packaged "
                                   "held-out text (30,000 tokens at most), passkey retrieval at --lengths x --depths, "
                                   "inference-state memory and decode speed (median of 5 runs); writes --out JSON.")  # fmt: skip
    _add_model_arguments(evaluate)
    evaluate.add_argument("--tasks", default="perplexity,passkey,memory,speed",
                          help="comma-separated tasks (default: all four)")  # fmt: skip
    _add_eval_arguments(evaluate)
    evaluate.add_argument("--out", required=True, help="results JSON file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier results file there")
    evaluate.set_defaults(handler=_eval)

    probe = commands.add_parser("probe", help="which heads can this model spare? every score vs random at one head count",
                                description="Remove the same number of heads every way (the highest-rank heads, the "
                                "lowest-rank heads, random heads over --seeds, JRNP, and the least important heads by "
                                "each of --scores), evaluate each on passkey and perplexity, say what each costs "
                                "against the original and the random control, and name the best score (smallest "
                                "relative perplexity increase + passkey drop). Loads the model once per variant.")  # fmt: skip
    _add_model_arguments(probe)
    _add_setting_arguments(probe, CALIBRATION)
    _add_setting_arguments(probe, PRUNING)
    _add_eval_arguments(probe)
    probe.add_argument("--stats", default=None, help="rank_stats.json from `analyze` (skips calibration)")
    probe.add_argument("--probe-heads", type=int, default=None, help="heads removed per variant (default: the budget)")
    probe.add_argument("--seeds", default="0,1,2", help="seeds of the random control (default 0,1,2)")
    from .config import IMPORTANCE_SCORES  # probe.DEFAULT_PROBE_SCORES, without importing torch for --help

    probe.add_argument("--scores", default=",".join(IMPORTANCE_SCORES),
                       help=f"importance scores that get a row each, measured once on the original model: any of "
                       f"{', '.join(IMPORTANCE_SCORES)}, kl_greedy ('none': rank rows only; kl_greedy costs about "
                       f"heads removed x heads forwards per batch) (default {','.join(IMPORTANCE_SCORES)})")  # fmt: skip
    probe.add_argument("--recover-steps", type=_positive_int, default=None, metavar="N",
                       help="also evaluate every variant after N steps of recovery by distillation from the model "
                       "(`recover`'s other defaults; the demo model's: 4 x 512 tokens a step)")  # fmt: skip
    probe.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    probe.add_argument("--overwrite", action="store_true", help="replace an earlier output of hf-rankprune there")
    probe.add_argument("--quiet", action="store_true", help="no progress bar")
    probe.set_defaults(handler=_probe)

    recover = commands.add_parser(
        "recover", help="recover a pruned model's quality by distillation from the original model",
        description="Train a pruned model (the output of `prune`) to imitate the model it was cut from (knowledge "
        "distillation on calibration text, KL of the next-token distributions) with the transformers Trainer: full "
        "fine-tuning or LoRA (merged at the end). The heads stay removed. Checkpoints go to a hidden sibling of --out; "
        "rerun the same command to resume an interrupted run. Demo model: 200 steps of 4 x 512 tokens, minutes on a "
        "CPU.",
    )  # fmt: skip
    recover.add_argument("pruned_model", metavar="PRUNED_DIR", help="a folder written by `hf-rankprune prune`")
    recover.add_argument("--teacher", default=None, metavar="MODEL",
                         help="the model to imitate: a folder or Hub id of the same architecture and vocabulary "
                         "(default: the model the plan records it was cut from)")  # fmt: skip
    recover.add_argument("--recipe", default=None, metavar="FILE", help="YAML recipe with a recovery_stage (flags "
                         "override it)")  # fmt: skip
    add_recovery_arguments(recover)
    recover.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' (default: CPU)")
    recover.add_argument("--out", required=True, help="output model folder (must not exist or be empty)")
    recover.add_argument("--overwrite", action="store_true", help="replace an earlier output of hf-rankprune there")
    recover.add_argument("--quiet", action="store_true", help="no progress bar")
    recover.set_defaults(handler=_recover)

    push = commands.add_parser("push", help="push a saved pruned model folder (weights, plan, card) to the Hub",
                               description="Upload a folder written by `hf-rankprune prune` to a Hub model repo in "
                               "one commit; the token is never written anywhere.")  # fmt: skip
    push.add_argument("folder", metavar="DIR", help="a folder written by `hf-rankprune prune` (or save_pretrained)")
    push.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, 'namespace/name' (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    push.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or the saved "
                      "`hf auth login`; prefer those: a flag is visible to other users of the machine)")  # fmt: skip
    push.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    push.add_argument("--commit-message", default=None, help="summary of the commit")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.set_defaults(handler=_push)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (reported as one line), as opposed to bugs (shown with a traceback)."""
    return (RankPruneError, FileNotFoundError)


class Terminated(BaseException):
    """SIGTERM arrived: raised from the signal handler so that unfinished outputs are cleaned up on the way out."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def runtime_faults() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the machine failed the run (disk full, I/O error, out of memory): exit 1, one line."""
    faults: tuple[type[BaseException], ...] = (OSError, MemoryError)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(getattr(torch, "OutOfMemoryError", None), type):
        faults += (torch.OutOfMemoryError,)
    return faults


def _fault_message(error: BaseException) -> str:
    if isinstance(error, OSError):
        reason = error.strerror or str(error) or type(error).__name__
        where = f" ({error.filename})" if error.filename else ""
        hint = " Free some disk space and run again." if error.errno == errno.ENOSPC else ""
        return f"{reason}{where}: the run stopped and its unfinished output was removed.{hint}"
    if isinstance(error, MemoryError):
        return "out of memory: the run stopped and its unfinished output was removed. Use smaller settings."
    return f"{type(error).__name__}: {error}. The run stopped and its unfinished output was removed."


def _print_error(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handle_sigterm = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handle_sigterm else None
    try:
        return args.handler(args)
    except user_errors() as error:
        _print_error(str(error))
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted (Ctrl-C): the run stopped and its unfinished output was removed.")
        return 130
    except Terminated:
        _print_error("terminated (SIGTERM): the run stopped and its unfinished output was removed.")
        return 128 + signal.SIGTERM
    except runtime_faults() as error:
        _print_error(_fault_message(error))
        return 1
    finally:
        if handle_sigterm:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
