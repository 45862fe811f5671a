"""Prune during training: a few `transformers.Trainer` steps with `RankPruneCallback` pruning at step N.

    python examples/train_with_recipe.py                         # the embedded demo model, recipes/demo.yaml
    python examples/train_with_recipe.py --tiny --max-steps 6 --prune-at 3 --summary out.json

The callback calibrates the model on a few training windows (eval mode, no grad) after optimizer step N, removes
the heads the recipe chooses, points the Trainer's optimizer at the new (smaller) parameters (the kept heads keep
their Adam moments), and training goes on: the remaining steps are recovery fine-tuning of the pruned model. Prints
the loss on a held-out batch (never trained on) before/after pruning and the head counts; `--summary` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from pydoc_data.topics import topics

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from hf_rankprune.loading import DEMO_MODEL_PATH  # noqa: E402
from hf_rankprune.recipe import load_recipe  # noqa: E402
from hf_rankprune.training import RankPruneCallback  # noqa: E402

EOS = "<|endoftext|>"


def build_tiny(seed: int = 0):
    """A tiny randomly initialised Qwen3.5 text model and a 300-token byte-level BPE (as tests/conftest.py builds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3_5ForCausalLM, Qwen3_5TextConfig

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator([topics[key] for key in sorted(topics)[:30]], trainer=trainer)
    torch.manual_seed(seed)
    config = Qwen3_5TextConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=8, max_position_embeddings=4096,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
    )  # fmt: skip
    return Qwen3_5ForCausalLM(config), PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS)


def training_windows(tokenizer, seq_len: int, count: int) -> torch.Tensor:
    """`count` windows of `seq_len` token ids from Python's help topics (offline English text)."""
    text = f" {EOS} ".join(topics[key] for key in sorted(topics)[30:])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    needed = seq_len * count
    ids = (ids * (needed // max(len(ids), 1) + 1))[:needed]
    return torch.tensor(ids, dtype=torch.long).view(count, seq_len)


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, windows: torch.Tensor):
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> dict:
        ids = self.windows[index]
        return {"input_ids": ids, "labels": ids.clone()}


def value_heads(model) -> int:
    return sum(int(m.num_v_heads) for m in model.modules() if hasattr(m, "num_v_heads"))


def optimizer_covers(optimizer, model) -> bool:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return all(id(p) in held for p in model.parameters() if p.requires_grad)


class Probe(TrainerCallback):
    """At the pruning step, measure the loss on a held-out batch (not trained on) and the head count ('before' runs before the pruning
    callback, 'after' after it); 'after' also keeps a copy of a pruned parameter to check that it trains."""

    def __init__(self, phase: str, step: int, batch: torch.Tensor, record: dict, watched: str):
        self.phase, self.step, self.batch, self.record, self.watched = phase, step, batch, record, watched

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step != self.step:
            return control
        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss = model(input_ids=self.batch, labels=self.batch).loss.item()
        model.train(was_training)
        self.record[f"probe_loss_{self.phase}_prune"] = loss
        self.record[f"value_heads_{self.phase}_prune"] = value_heads(model)
        if self.phase == "after":
            param = dict(model.named_parameters())[self.watched]
            self.record["watched_shape_after_prune"] = list(param.shape)
            self.record["optimizer_covers_model_after_prune"] = optimizer_covers(optimizer, model)
            self.record["_watched_copy"] = param.detach().clone()
        return control


class ProbeAfter(Probe):
    """A class of its own: the Trainer warns when two callbacks share a class."""


class LossLog(TrainerCallback):
    def __init__(self, record: dict):
        self.record = record

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.record.setdefault("train_loss", {})[state.global_step] = float(logs["loss"])
        return control


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen3.5 model built from config (no download)")
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "demo.yaml"), help="recipe YAML")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--prune-at", type=int, default=None, help="default: the recipe's start_step")
    parser.add_argument("--seq-len", type=int, default=128, help="training window length")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--calibration-samples", type=int, default=4, help="training windows used to calibrate")
    parser.add_argument("--summary", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    recipe = load_recipe(args.recipe)
    if args.tiny:
        model, tokenizer = build_tiny()
    else:
        from hf_rankprune.loading import load_model_and_tokenizer, resolve_model_path

        if args.model is None and not (DEMO_MODEL_PATH / "config.json").is_file():
            parser.error(f"the demo model is missing at {DEMO_MODEL_PATH}: pass --model DIR or --tiny")
        model, tokenizer = load_model_and_tokenizer(resolve_model_path(args.model))
    prune_at = args.prune_at if args.prune_at is not None else recipe.start_step
    if prune_at is None or not 0 < prune_at < args.max_steps:
        parser.error(f"--prune-at must lie between 0 and --max-steps={args.max_steps} (got {prune_at})")

    windows = training_windows(tokenizer, args.seq_len,
                               args.calibration_samples + args.batch_size + args.batch_size * args.max_steps)  # fmt: skip
    # calibration windows, a held-out batch for the loss measurements (never trained on), the training windows
    calibration = windows[: args.calibration_samples]
    probe_batch = windows[args.calibration_samples : args.calibration_samples + args.batch_size]
    train = windows[args.calibration_samples + args.batch_size :]
    linear = [n for n, _ in model.named_parameters() if n.endswith("linear_attn.out_proj.weight")]
    record: dict = {"value_heads_start": value_heads(model), "prune_at": prune_at, "watched": linear[0]}
    pruning = RankPruneCallback(recipe, tokenizer, data=calibration, start_step=prune_at)

    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        model.train()
        trainer = Trainer(
            model=model, args=training_args, train_dataset=WindowDataset(train), data_collator=default_data_collator,
            callbacks=[Probe("before", prune_at, probe_batch, record, linear[0]), pruning,
                       ProbeAfter("after", prune_at, probe_batch, record, linear[0]), LossLog(record)],
        )  # fmt: skip
        trainer.train()

    model.eval()
    with torch.no_grad():
        record["probe_loss_end"] = model(input_ids=probe_batch, labels=probe_batch).loss.item()
    watched_after = record.pop("_watched_copy")
    final = dict(model.named_parameters())[linear[0]].detach()
    record["watched_change_after_prune"] = float((final - watched_after).abs().max())
    record["value_heads_end"] = value_heads(model)
    record["removed_value_heads"] = pruning.plan.settings["removed_value_heads"] if pruning.plan else 0
    record["pruned_at_step"] = pruning.pruned_at_step
    record["final_train_loss"] = record["train_loss"][max(record["train_loss"])]
    record["finite"] = all(math.isfinite(v) for v in record["train_loss"].values()) and math.isfinite(
        record["probe_loss_end"]
    )

    print(f"value heads: {record['value_heads_start']} -> {record['value_heads_end']} (pruned after step {prune_at})")
    print(f"held-out loss: {record['probe_loss_before_prune']:.4f} before pruning, {record['probe_loss_after_prune']:.4f} "
          f"right after, {record['probe_loss_end']:.4f} after {args.max_steps - prune_at} recovery steps")  # fmt: skip
    print("train loss per step: " + ", ".join(f"{s}: {v:.4f}" for s, v in sorted(record["train_loss"].items())))
    if args.summary:
        Path(args.summary).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
