"""Does state-rank stratification appear in a model? The paper's statistics, side by side for several models.

For each model folder, `hf-rankprune analyze` runs on built-in calibration text and the report's numbers are printed
in one table: heads, the low/high split, Sarle's bimodality coefficient (> 0.556 suggests two modes), the variance
the split explains, rank stability (Spearman of per-head rank early vs late in the sequence; the least label
agreement between data categories) and the Spearman correlation of the data-free decay score with the rank. With
`--random-init`, each model is also analysed freshly initialised from its own config (same seed): a control for
stratification the initialisation builds in (trained decays differ from initial ones).

    .venv/bin/python benchmarks/stratification.py demo /path/to/model --num-samples 16 --seq-len 1024 --random-init
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("model", "type", "heads", "low/high", "split", "bimodality", "explained", "early~late", "min agree",
           "decay~rank")  # fmt: skip


def analyze(folder: str, out: Path, num_samples: int, seq_len: int) -> dict:
    from hf_rankprune.cli import main

    code = main(["analyze", folder, "--num-samples", str(num_samples), "--seq-len", str(seq_len), "--quiet",
                 "--out", str(out)])  # fmt: skip
    if code != 0:
        raise SystemExit(f"analyze failed on {folder} (exit {code})")
    return json.loads((out / "report.json").read_text())


def random_copy(folder: str, target: Path, seed: int) -> str:
    """The model of `folder` freshly initialised from its config (with its tokenizer), saved to `target`."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from hf_rankprune.checkpoint import auto_class_for_config

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    auto_class_for_config(config).from_config(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(folder).save_pretrained(target)
    return str(target)


def row(name: str, report: dict) -> list[str]:
    strat, stab = report["stratification"], report["stability"]
    agreement = stab.get("min_pairwise_label_agreement_across_categories")
    return [
        name,
        str(report.get("model_type")),
        str(strat["total_heads"]),
        f"{strat['low_heads']}/{strat['high_heads']}",
        f"{strat['split_normalised_rank']:.2f}",
        f"{strat['bimodality']['coefficient']:.3f}",
        f"{strat['bimodality']['separation']:.3f}",
        f"{stab['spearman_rank_early_vs_late']:.3f}",
        "-" if agreement is None else f"{agreement:.3f}",
        f"{report['decay']['spearman_with_mean_rank']:.3f}" if "decay" in report else "-",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders or Hub ids; 'demo' for the embedded demo model")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--random-init", action="store_true", help="also analyse each model freshly initialised")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write every report's numbers here")
    args = parser.parse_args(argv)

    from hf_rankprune.loading import DEMO_MODEL_PATH

    rows, reports = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for position, model in enumerate(args.models):
            folder = str(DEMO_MODEL_PATH) if model == "demo" else model
            variants = [(model, folder)]
            if args.random_init:
                copy = Path(scratch) / f"random-{position}"
                variants.append((f"{model} (random init)", random_copy(folder, copy, args.seed)))
            for name, path in variants:
                report = analyze(path, Path(scratch) / f"analysis-{len(rows)}", args.num_samples, args.seq_len)
                reports[name] = report
                rows.append(row(name, report))
    widths = [max(len(str(cell)) for cell in column) for column in zip(COLUMNS, *rows)]
    print(f"calibration: {args.num_samples} built-in samples x {args.seq_len} tokens")
    for cells in (COLUMNS, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)))
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
