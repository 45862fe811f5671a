"""Recovery after pruning: knowledge distillation from the original model into the pruned one.

    hf-rankprune recover PRUNED_DIR --out DIR [--teacher MODEL] [--steps N] [--method full|lora]
    recover("pruned/", "recovered/", RecoveryConfig(steps=300))          # the same, from Python

The student is the pruned model as saved (its heads stay removed: the result keeps the pruned architecture and loads
like any pruned model). The teacher is the model the plan was cut from (`PrunePlan.original_model`, recorded at
pruning time; `--teacher` overrides it) and must share the student's architecture and vocabulary. Training is the
transformers `Trainer` on calibration text (the built-in suite by default), with the loss KL(p_teacher || p_student)
of the next-token distributions at a temperature, averaged over tokens (weighted by the samples' token weights when
they carry some); full fine-tuning, or LoRA adapters through peft that are merged into the weights at the end.

A run is resumable and never leaves a half-written output: Trainer checkpoints go into a hidden sibling of the output
(`.<name>.recovery-checkpoints`, with the run's settings in `run.json`); rerunning the same command resumes from the
newest complete checkpoint, and the output folder appears whole, in one rename, at the end (the checkpoints are then
removed). A rerun with other settings is refused rather than mixing two runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import _fail, _in_interval, _int, _positive_int, check_declared_fields
from .errors import ConfigError, UsageError

RECOVERY_FILE = "recovery.json"  # what recovery did, in the output folder (the card shows it)
RUN_FILE = "run.json"  # the settings of the run a checkpoint folder belongs to
COMPLETE_MARKER = ".complete"  # written into a Trainer checkpoint once it is whole
METHODS = ("full", "lora")
SCHEDULERS = ("cosine", "linear", "constant_with_warmup")
# The embedded demo model's recovery (`recover` on a model cut from it; recipes/demo.yaml's recovery stage): 200 steps of
# 4 x 512 tokens of its own kind of text (pydoc, disjoint from the perplexity text) at 3e-4, a few minutes on 2 CPU
# cores. Measured on the kl-pruned demo model, 100 steps: lr 1e-3 cost passkey (1.00 -> 0.78), 1e-4 on the builtin
# suite gained less perplexity (70.14 -> 69.12) than 3e-4 on pydoc (-> 68.64); 2e-3 for 200 steps made it worse.
DEMO_RECOVERY = {"seq_len": 512, "batch_size": 4, "steps": 200, "learning_rate": 3e-4, "data": ["pydoc"]}


def _field(default: Any, help: str, *, check=None, choices: tuple | None = None, flag: bool = True) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "choices": choices,
                                                        "flag": flag})  # fmt: skip


def _optional_specs(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, str):
        setattr(config, name, [value])
    elif not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        _fail(config, name, "give a list of data specs (as calibration data takes) or null for the built-in suite")


def _optional_positive_int(config: Any, name: str) -> None:
    if getattr(config, name) is not None:
        _positive_int(config, name)


def _positive(config: Any, name: str) -> None:
    _in_interval(0.0, math.inf, low_open=True)(config, name)


@dataclass
class RecoveryConfig:
    """Settings of one recovery run (the recipe's `recovery_stage`, the `recover` command's flags)."""

    steps: int = _field(300, "optimizer steps of distillation", check=_positive_int)
    learning_rate: float = _field(1e-5, "peak learning rate (LoRA adapters usually take ~1e-4, full fine-tuning of a "
                                  "large model ~1e-5)", check=_positive)  # fmt: skip
    method: str = _field("full", "'full' fine-tunes every weight; 'lora' trains LoRA adapters on every linear layer "
                         "(peft) and merges them into the weights at the end", choices=METHODS)  # fmt: skip
    lora_rank: int = _field(16, "rank of the LoRA adapters (method lora)", check=_positive_int)
    lora_alpha: float = _field(32.0, "LoRA scaling numerator (method lora)", check=_positive)
    temperature: float = _field(1.0, "distillation temperature (the KL is scaled by its square)", check=_positive)
    hard_label_weight: float = _field(0.0, "weight of the next-token cross-entropy added to the KL (0: pure "
                                      "distillation)", check=_in_interval(0.0, 1.0))  # fmt: skip
    batch_size: int = _field(1, "samples per optimizer step (per device)", check=_positive_int)
    gradient_accumulation_steps: int = _field(1, "forward/backward passes per optimizer step", check=_positive_int)
    seq_len: int = _field(2048, "tokens per training sample", check=_positive_int)
    num_samples: int | None = _field(None, "training samples (default: steps x batch size x accumulation, each seen "
                                     "once)", check=_optional_positive_int)  # fmt: skip
    data: list[str] | None = _field(None, "training text specs, as calibration data takes (default: the built-in "
                                    "offline suite)", check=_optional_specs)  # fmt: skip
    retrieval_mix: float = _field(0.25, "fraction of the training samples replaced by passkey-like retrieval documents "
                                  "(hf_rankprune.data.retrieval, disjoint from the evaluation's passkeys), so recovery "
                                  "also restores retrieval", check=_in_interval(0.0, 1.0))  # fmt: skip
    answer_weight: float = _field(10.0, "weight of a retrieval document's answer tokens in the loss (the rest weigh 1)",
                                  check=_positive)  # fmt: skip
    warmup_ratio: float = _field(0.05, "fraction of the steps spent warming the learning rate up",
                                 check=_in_interval(0.0, 1.0))  # fmt: skip
    lr_scheduler: str = _field("cosine", "learning-rate schedule after the warm-up", choices=SCHEDULERS)
    weight_decay: float = _field(0.0, "AdamW weight decay", check=_in_interval(0.0, 1.0))
    save_steps: int = _field(50, "a resumable checkpoint every this many steps", check=_positive_int)
    seed: int = _field(0, "seeds the training data, its order and the adapters' initialisation", check=_int)

    def __post_init__(self) -> None:
        check_declared_fields(self)

    @property
    def samples_needed(self) -> int:
        return self.num_samples or self.steps * self.batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecoveryConfig:
        known = [spec.name for spec in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"Unknown recovery setting(s) {unknown}; known settings are: {known}.")
        return cls(**values)

    def replace(self, **overrides: Any) -> RecoveryConfig:
        return type(self).from_dict({**self.to_dict(), **overrides})


RECOVERY_SETTINGS = dataclasses.fields(RecoveryConfig)


# -- the loss ----------------------------------------------------------------------------------------------------


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Mean over positions of T^2 * KL(softmax(teacher / T) || softmax(student / T)), each position weighted by
    `weights` ([B, L]: the weight of the prediction made at each position, as `CalibrationSamples.weights`; None:
    uniform)."""
    log_p_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits.float().to(student_logits.device) / temperature, dim=-1)
    per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # [B, L]
    if weights is None:
        return per_position.mean() * temperature**2
    weights = weights.to(per_position.device, per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp_min(1e-12) * temperature**2


# -- training ----------------------------------------------------------------------------------------------------


class _TokenWindows(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.input_ids = samples.input_ids
        self.weights = getattr(samples, "weights", None)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.input_ids[index]}
        if self.weights is not None:
            item["token_weights"] = self.weights[index]
        return item


def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class DistillationTrainer(Trainer):
        """A `Trainer` whose loss is the distillation loss against a frozen teacher."""

        def __init__(self, *args, teacher: torch.nn.Module, config: RecoveryConfig, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher
            self.recovery = config
            self.losses: list[tuple[int, float]] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            input_ids = inputs["input_ids"]
            outputs = model(input_ids=input_ids, use_cache=False)
            with torch.no_grad():
                teacher_device = next(self.teacher.parameters()).device
                teacher_logits = self.teacher(input_ids=input_ids.to(teacher_device), use_cache=False).logits
            loss = distillation_loss(outputs.logits, teacher_logits, self.recovery.temperature,
                                     inputs.get("token_weights"))  # fmt: skip
            if self.recovery.hard_label_weight > 0:
                labels = input_ids[:, 1:].reshape(-1).to(outputs.logits.device)
                ce = torch.nn.functional.cross_entropy(outputs.logits[:, :-1].float().reshape(-1, outputs.logits.shape[-1]),
                                                       labels)  # fmt: skip
                loss = (1 - self.recovery.hard_label_weight) * loss + self.recovery.hard_label_weight * ce
            return (loss, outputs) if return_outputs else loss

    class CheckpointComplete(TrainerCallback):
        """Marks a Trainer checkpoint whole once it is written (resuming takes only marked checkpoints)."""

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text("", encoding="utf-8")
            return control

    class LossLog(TrainerCallback):
        def __init__(self):
            self.history: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.history.append({"step": state.global_step, "loss": float(logs["loss"])})
            return control

    return DistillationTrainer, CheckpointComplete, LossLog


def _lora_model(model: torch.nn.Module, config: RecoveryConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules="all-linear")  # fmt: skip
    return get_peft_model(model, lora)


def distill(student: torch.nn.Module, teacher: torch.nn.Module, samples: Any, config: RecoveryConfig, *,
            work_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
            callbacks: tuple = ()) -> dict[str, Any]:  # fmt: skip
    """Train `student` in place to match `teacher` on `samples` (CalibrationSamples) with the Trainer; LoRA adapters
    are merged back, so `student` keeps its own class and architecture. `work_dir`: where checkpoints go (None: no
    checkpoints); `resume`: continue from the newest complete checkpoint there. Returns what was done (steps, tokens,
    losses, seconds), as `recovery.json` records it."""
    import tempfile

    from transformers import TrainingArguments

    trainer_class, complete_callback, loss_log = _trainer_class()
    torch.manual_seed(config.seed)
    teacher.eval()  # its forward runs under no_grad; its parameters are left as they are (it may be the caller's model)
    model = _lora_model(student, config) if config.method == "lora" else student
    model.train()
    log = loss_log()
    with tempfile.TemporaryDirectory(prefix="hf_rankprune-recovery-") as scratch:
        output_dir = Path(work_dir) if work_dir is not None else Path(scratch)
        args = TrainingArguments(
            output_dir=str(output_dir),
            max_steps=config.steps,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_scheduler,
            warmup_steps=int(round(config.warmup_ratio * config.steps)),
            weight_decay=config.weight_decay,
            save_strategy="steps" if work_dir is not None else "no",
            save_steps=config.save_steps,
            save_total_limit=2,  # the newest checkpoint is marked complete only after the older one is rotated out
            logging_steps=max(1, min(10, config.steps // 10)),
            seed=config.seed,
            data_seed=config.seed,
            report_to=[],
            disable_tqdm=not progress,
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
        )
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=_TokenWindows(samples),
            data_collator=_collate,
            teacher=teacher,
            config=config,
            callbacks=[complete_callback(), log, *callbacks],
        )
        if not progress:  # the Trainer prints every log line when its progress bar is off
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        checkpoint = newest_complete_checkpoint(output_dir) if resume else None
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        seconds = time.perf_counter() - start
    if config.method == "lora":
        model.merge_and_unload()
    student.eval()
    tokens_per_step = config.batch_size * config.gradient_accumulation_steps * samples.input_ids.shape[1]
    return {
        "steps": int(result.global_step),
        "resumed_from_step": int(checkpoint.name.split("-")[-1]) if checkpoint is not None else None,
        "tokens_seen": int(result.global_step * tokens_per_step),
        "train_loss": float(result.training_loss),
        "loss_history": log.history,
        "seconds": round(seconds, 1),
    }


def training_samples(tokenizer: Any, config: RecoveryConfig):
    """The distillation data: `config.data` cut into samples_needed x seq_len tokens, `retrieval_mix` of them
    replaced by retrieval documents whose answer tokens weigh `answer_weight`."""
    from .data import load_calibration_samples
    from .data.retrieval import mix_retrieval

    samples = load_calibration_samples(config.data, tokenizer, config.samples_needed, config.seq_len, config.seed)
    return mix_retrieval(samples, tokenizer, config.retrieval_mix, config.answer_weight, config.seed)[0]


def recovery_function(teacher: torch.nn.Module, tokenizer: Any, config: RecoveryConfig, *, progress: bool = False):
    """`recover(model) -> model`: distils `teacher` into a pruned copy of it in place, on one set of training samples
    shared by every call (the probe recovers each of its variants alike with it)."""
    samples = training_samples(tokenizer, config)

    def recover_model(model: torch.nn.Module) -> torch.nn.Module:
        distill(model, teacher, samples, config, progress=progress)
        return model

    return recover_model


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def newest_complete_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The Trainer checkpoint of highest step in `folder` that was written whole; unfinished ones are removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for candidate in folder.glob("checkpoint-*"):
        step = candidate.name.split("-")[-1]
        if not step.isdigit() or not candidate.is_dir():
            continue
        if (candidate / COMPLETE_MARKER).is_file():
            found.append((int(step), candidate))
        else:
            shutil.rmtree(candidate, ignore_errors=True)
    return max(found)[1] if found else None


# -- the whole command -------------------------------------------------------------------------------------------


def recovery_work_dir(output_dir: str | os.PathLike) -> Path:
    """The hidden sibling of `output_dir` where a run's checkpoints wait until it finishes."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(output_dir))))
    return path.parent / f".{path.name}.recovery-checkpoints"


def check_teacher(student_config, teacher_config, teacher: str) -> None:
    """The teacher must be the student's architecture (its un-pruned model type) and have its vocabulary."""
    from .recipe import _model_types

    student_types = set(_model_types(student_config))
    teacher_types = _model_types(teacher_config)
    if not student_types & set(teacher_types):
        raise UsageError(
            f"--teacher {teacher} is model_type={teacher_types[0] if teacher_types else None!r}, but the pruned model "
            f"is {sorted(student_types)}: distillation needs a teacher of the same architecture (by default the model "
            "the pruned one was cut from)."
        )
    student_vocab = getattr(student_config.get_text_config(), "vocab_size", None)
    teacher_vocab = getattr(teacher_config.get_text_config(), "vocab_size", None)
    if student_vocab != teacher_vocab:
        raise UsageError(
            f"--teacher {teacher} has a vocabulary of {teacher_vocab} tokens and the pruned model {student_vocab}: "
            "their next-token distributions cannot be compared. Use the model the pruned one was cut from."
        )


def _tokenizer(model_path: str):
    from transformers import AutoTokenizer

    from .loading import ModelLoadError

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load the tokenizer of {model_path!r}: {error}") from error


def _check_tokenizers(student_tokenizer, teacher_tokenizer, teacher: str) -> None:
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise UsageError(
            f"--teacher {teacher}'s tokenizer maps tokens to other ids than the pruned model's: distillation compares "
            "distributions token by token, so both need the same tokenizer."
        )


def _fingerprint(pruned: Path, teacher: str, config: RecoveryConfig) -> dict[str, Any]:
    """What makes two runs the same run: the pruned model's files, the teacher and the settings."""
    digest = hashlib.sha256()
    for path in sorted(pruned.glob("*.safetensors")) + [pruned / "config.json"]:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return {"pruned_model": str(pruned), "pruned_files": digest.hexdigest(), "teacher": teacher,
            "settings": config.to_dict()}  # fmt: skip


def _resumable(work: Path, fingerprint: dict[str, Any], output_dir: str | os.PathLike) -> bool:
    """Whether `work` holds a checkpoint of this very run to resume from; checkpoints of another run are refused."""
    if not work.exists():
        return False
    try:
        earlier = json.loads((work / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if earlier != fingerprint:
        raise UsageError(
            f"{work} holds checkpoints of an interrupted recovery into {output_dir} with other settings (or other "
            "files): rerun that command to resume it, or delete the folder to start this one."
        )
    return newest_complete_checkpoint(work) is not None


def resolve_teacher(plan, teacher: str | None) -> str:
    """The teacher given, else the original model the plan records (the embedded demo model by its marker)."""
    from .loading import DEMO_MODEL_PATH
    from .plan import DEMO_ORIGINAL

    name = teacher if teacher is not None else plan.original_model
    if name is None:
        raise UsageError(
            "The pruned model's plan does not record the model it was cut from (it was pruned by an older "
            "hf_rankprune): give the teacher with --teacher MODEL (the original model's folder or Hub id)."
        )
    return str(DEMO_MODEL_PATH) if name == DEMO_ORIGINAL else name


@dataclass
class RecoveryResult:
    folder: Path
    info: dict[str, Any]


def recover(pruned_model: str | os.PathLike, output_dir: str | os.PathLike, config: RecoveryConfig | None = None, *,
            teacher: str | None = None, overwrite: bool = False, device_map: str | dict | None = None,
            progress: bool = True, callbacks: tuple = ()) -> RecoveryResult:  # fmt: skip
    """Distil the original model into the pruned model saved at `pruned_model` and save the result into
    `output_dir` (a pruned model folder with its card, plan and `recovery.json`). Every input is checked before
    any work; an interrupted run resumes when called again with the same arguments."""
    from .card import write_recovered_card
    from .loading import load_config, load_model_and_tokenizer, resolve_model_path
    from .surgery import model_plan, save_pruned
    from .utils import check_output_dir

    config = config or RecoveryConfig()
    pruned_path = resolve_model_path(os.fspath(pruned_model))
    if not Path(pruned_path).is_dir():
        raise UsageError(f"{pruned_model} is not a folder: give the output folder of `hf-rankprune prune`.")
    student_config = load_config(pruned_path)
    plan = model_plan(student_config)
    if plan is None:
        raise UsageError(
            f"{pruned_model} is not a pruned model (its config.json carries no rankprune_plan): prune it first "
            "with `hf-rankprune prune`, then recover the result."
        )
    teacher_name = resolve_teacher(plan, teacher)
    teacher_path = resolve_model_path(teacher_name)
    inputs = [pruned_path, teacher_path, *(spec for spec in config.data or () if Path(spec).exists())]
    check_output_dir(output_dir, overwrite, inputs)
    check_teacher(student_config, load_config(teacher_path), teacher_name)
    work = recovery_work_dir(output_dir)
    fingerprint = _fingerprint(Path(pruned_path).resolve(), str(teacher_name), config)
    resume = _resumable(work, fingerprint, output_dir)
    _check_tokenizers(_tokenizer(pruned_path), _tokenizer(teacher_path), teacher_name)

    student, tokenizer = load_model_and_tokenizer(pruned_path, device_map=device_map)
    teacher_model, _ = load_model_and_tokenizer(teacher_path, device_map=device_map)
    samples = training_samples(tokenizer, config)
    if progress:
        where = f"resuming from {newest_complete_checkpoint(work).name}" if resume else f"checkpoints in {work}"
        print(f"Recovering {pruned_model} from teacher {teacher_name}: {config.steps} steps of {config.method} "
              f"distillation on {len(samples)} samples x {config.seq_len} tokens ({where})", flush=True)  # fmt: skip
    if not resume:
        shutil.rmtree(work, ignore_errors=True)  # a run of these settings that stopped before its first checkpoint
        work.mkdir(parents=True)
        (work / RUN_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
    try:
        info = distill(student, teacher_model, samples, config, work_dir=work, resume=resume, progress=progress,
                       callbacks=callbacks)  # fmt: skip
    except BaseException:
        if newest_complete_checkpoint(work) is None:  # nothing to resume from: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    info = {"teacher": str(teacher) if teacher is not None else _portable(teacher_name), "pruned_model": str(pruned_model),
            "settings": config.to_dict(), "data": config.data or ["builtin"], "samples": len(samples), **info}  # fmt: skip
    del teacher_model
    folder = save_pruned(student, output_dir, tokenizer, overwrite=overwrite, source_model=pruned_path,
                         write_extra=lambda staging: write_recovered_card(staging, pruned_path, plan, info))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return RecoveryResult(folder, info)


def _portable(name: str) -> str:
    """How recovery.json names the teacher: the demo model by its marker, not by this machine's path."""
    from .loading import DEMO_MODEL_PATH
    from .plan import DEMO_ORIGINAL

    return DEMO_ORIGINAL if Path(name).resolve() == DEMO_MODEL_PATH.resolve() else name
