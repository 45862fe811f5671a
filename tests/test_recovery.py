"""Recovery by distillation (`hf-rankprune recover`), on the user's path: a tiny Qwen3.5 checkpoint saved on disk,
pruned and saved by the command line, recovered into a new folder, loaded again in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_rankprune.cli import main
from hf_rankprune.recipe import load_recipe
from hf_rankprune.recovery import (
    RecoveryConfig,
    distill,
    distillation_loss,
    recover,
    recovery_work_dir,
    training_samples,
)
from hf_rankprune.surgery import model_plan

# a few steps of short samples: seconds on a CPU (no retrieval documents: they need longer samples)
QUICK = RecoveryConfig(steps=4, batch_size=2, seq_len=32, learning_rate=1e-2, save_steps=2, retrieval_mix=0.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(original folder, pruned folder): the original saved as a user's model, pruned by `hf-rankprune prune`."""
    root = tmp_path_factory.mktemp("recovery")
    original = save_tiny_model("qwen3_5", root / "original")
    pruned = root / "pruned"
    code = main([
        "prune", str(original), "--out", str(pruned), "--num-heads", "3", "--num-samples", "4", "--seq-len", "64",
        "--quiet",
    ])  # fmt: skip
    assert code == 0
    return original, pruned


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_the_plan_records_the_original_model(checkpoints):
    original, pruned = checkpoints
    plan = model_plan(AutoModelForCausalLM.from_pretrained(pruned).config)
    assert plan.original_model == str(original.resolve())


def test_recover_trains_the_pruned_model_and_keeps_its_architecture(checkpoints, tmp_path):
    original, pruned = checkpoints
    out = tmp_path / "recovered"
    result = recover(pruned, out, QUICK, progress=False)
    before, after = _state(pruned), _state(out)
    assert before.keys() == after.keys()  # same tensors, same shapes: the heads stay removed
    assert all(before[name].shape == after[name].shape for name in before)
    assert any(not torch.equal(before[name], after[name]) for name in before)  # and it was trained
    assert model_plan(json.loads((out / "config.json").read_text())) == model_plan(
        json.loads((pruned / "config.json").read_text())
    )
    info = json.loads((out / "recovery.json").read_text())
    assert info["steps"] == 4 and info["teacher"] == str(original.resolve())
    assert info["tokens_seen"] == 4 * 2 * 32 and info["settings"]["method"] == "full"
    assert not recovery_work_dir(out).exists()  # checkpoints removed once the output is whole
    card = (out / "README.md").read_text()
    assert "## Recovery" in card and "4 optimizer steps" in card and "KL(p_teacher || p_pruned)" in card
    assert result.folder == out.absolute()


def test_the_recovered_model_loads_in_a_fresh_process_bit_for_bit(checkpoints, tmp_path):
    _, pruned = checkpoints
    out = tmp_path / "recovered"
    recover(pruned, out, QUICK, progress=False)
    script = (
        "import sys, torch, hf_rankprune\n"
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "torch.save({k: v.clone() for k, v in model.state_dict().items()}, sys.argv[2])\n"
    )
    dump = tmp_path / "state.pt"
    subprocess.run([sys.executable, "-c", script, str(out), str(dump)], check=True)
    loaded, saved = torch.load(dump), _state(out)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def _kl_to_teacher(student, teacher, samples) -> float:
    with torch.no_grad():
        ids = samples.input_ids
        return float(distillation_loss(student(input_ids=ids).logits, teacher(input_ids=ids).logits))


def test_distillation_brings_the_student_closer_to_the_teacher(checkpoints):
    original, pruned = checkpoints
    teacher = AutoModelForCausalLM.from_pretrained(original).eval()
    with torch.no_grad():  # a random tiny model predicts almost uniformly: give the teacher confident predictions
        teacher.get_output_embeddings().weight.mul_(30.0)
    student = AutoModelForCausalLM.from_pretrained(pruned).eval()
    from transformers import AutoTokenizer

    config = QUICK.replace(steps=20, learning_rate=3e-3, save_steps=100)
    samples = training_samples(AutoTokenizer.from_pretrained(pruned), config)
    before = _kl_to_teacher(student, teacher, samples)
    distill(student, teacher, samples, config, progress=False)
    after = _kl_to_teacher(student, teacher, samples)
    assert all(parameter.requires_grad for parameter in teacher.parameters())  # the teacher is left as it was
    assert after < 0.8 * before, (before, after)


def test_lora_recovery_is_merged_into_the_pruned_architecture(checkpoints, tmp_path):
    _, pruned = checkpoints
    out = tmp_path / "lora"
    recover(pruned, out, QUICK.replace(method="lora", lora_rank=4), progress=False)
    before, after = _state(pruned), _state(out)
    assert before.keys() == after.keys()  # no adapter weights left: merged
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all(name.endswith("weight") for name in changed)
    assert "LoRA adapters of rank 4" in (out / "README.md").read_text()


class _Interrupt(Exception):
    pass


def _interrupt_after(step: int):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Interrupt()

    return Stop()


def test_an_interrupted_recovery_resumes_to_the_same_weights(checkpoints, tmp_path):
    _, pruned = checkpoints
    straight = tmp_path / "straight"
    recover(pruned, straight, QUICK, progress=False)

    out = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        recover(pruned, out, QUICK, progress=False, callbacks=(_interrupt_after(3),))
    assert not out.exists()  # nothing half-written where the output goes
    work = recovery_work_dir(out)
    assert (work / "checkpoint-2" / ".complete").is_file()
    result = recover(pruned, out, QUICK, progress=False)
    assert result.info["resumed_from_step"] == 2
    for name, tensor in _state(straight).items():
        assert torch.equal(_state(out)[name], tensor), name
    assert not work.exists()


def test_an_interruption_before_the_first_checkpoint_leaves_nothing(checkpoints, tmp_path):
    _, pruned = checkpoints
    out = tmp_path / "early"
    with pytest.raises(_Interrupt):
        recover(pruned, out, QUICK, progress=False, callbacks=(_interrupt_after(1),))
    assert not out.exists() and not recovery_work_dir(out).exists()


def _nothing_written(folder: Path, before: set) -> bool:
    return set(folder.iterdir()) == before


def test_bad_inputs_exit_2_and_write_nothing(checkpoints, tmp_path, capsys):
    original, pruned = checkpoints
    other_arch = save_tiny_model("mamba2", tmp_path / "mamba2")
    other_vocab = save_tiny_model("qwen3_5", tmp_path / "vocab", vocab_size=512)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("a user's file")
    before = set(tmp_path.iterdir())
    capsys.readouterr()
    cases = {
        "exists and is not empty": [str(pruned), "--out", str(existing)],
        "not a pruned model": [str(original), "--out", str(tmp_path / "o1")],
        "same architecture": [str(pruned), "--teacher", str(other_arch), "--out", str(tmp_path / "o2")],
        "vocabulary": [str(pruned), "--teacher", str(other_vocab), "--out", str(tmp_path / "o3")],
        "steps=0 is not allowed": [str(pruned), "--steps", "0", "--out", str(tmp_path / "o4")],
        "retrieval_mix=1.5": [str(pruned), "--retrieval-mix", "1.5", "--out", str(tmp_path / "o5")],
    }
    for expected, argv in cases.items():
        assert main(["recover", *argv, "--quiet"]) == 2, expected
        error = capsys.readouterr().err
        assert error.startswith("error: ") and expected in error, (expected, error)
        assert _nothing_written(tmp_path, before), expected
    assert (existing / "mine.txt").read_text() == "a user's file"


def test_a_checkpoint_folder_of_other_settings_is_refused(checkpoints, tmp_path, capsys):
    _, pruned = checkpoints
    out = tmp_path / "out"
    with pytest.raises(_Interrupt):
        recover(pruned, out, QUICK, progress=False, callbacks=(_interrupt_after(3),))
    argv = ["recover", str(pruned), "--out", str(out), "--steps", "6", "--batch-size", "2", "--seq-len", "32",
            "--retrieval-mix", "0", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert "other settings" in capsys.readouterr().err
    assert (recovery_work_dir(out) / "checkpoint-2").is_dir()  # the interrupted run is kept for its own resume


def test_a_plan_without_its_original_needs_a_teacher(checkpoints, tmp_path, capsys):
    original, pruned = checkpoints
    old = tmp_path / "old_pruned"
    import shutil

    shutil.copytree(pruned, old)
    for name in ("config.json", "prune_plan.json"):
        text = (old / name).read_text().replace('"original_model"', '"recorded_elsewhere"')
        (old / name).write_text(text)
    assert main(["recover", str(old), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "--teacher" in capsys.readouterr().err
    argv = ["recover", str(old), "--teacher", str(original), "--out", str(tmp_path / "o"), "--steps", "2",
            "--batch-size", "2", "--seq-len", "32", "--retrieval-mix", "0", "--quiet"]  # fmt: skip
    assert main(argv) == 0


def test_the_recipe_recovery_stage_drives_the_command(checkpoints, tmp_path):
    _, pruned = checkpoints
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "pruning_stage:\n  pruning_modifiers:\n    RankPruningModifier: {num_heads: 3}\n"
        "recovery_stage:\n  recovery_modifiers:\n    DistillationModifier:\n"
        "      {steps: 3, batch_size: 2, seq_len: 32, learning_rate: 0.01, retrieval_mix: 0.0, method: lora}\n"
    )
    loaded = load_recipe(recipe)
    assert loaded.recovery == RecoveryConfig(steps=3, batch_size=2, seq_len=32, learning_rate=0.01, retrieval_mix=0.0,
                                             method="lora")  # fmt: skip
    assert load_recipe(loaded.to_dict()) == loaded
    out = tmp_path / "out"
    assert main(["recover", str(pruned), "--recipe", str(recipe), "--steps", "2", "--out", str(out), "--quiet"]) == 0
    settings = json.loads((out / "recovery.json").read_text())["settings"]
    assert settings["steps"] == 2 and settings["method"] == "lora"  # the flag wins over the recipe


def test_retrieval_documents_weigh_their_answers_in_the_loss():
    teacher = torch.zeros(1, 3, 5)
    student = torch.zeros(1, 3, 5)
    student[0, 1, 0] = 4.0  # only position 1 differs
    uniform = distillation_loss(student, teacher)
    weights = torch.tensor([[1.0, 10.0, 1.0]])
    weighted = distillation_loss(student, teacher, weights=weights)
    per_position = distillation_loss(student[:, 1:2], teacher[:, 1:2])
    assert torch.isclose(uniform, per_position / 3)
    assert torch.isclose(weighted, per_position * 10 / 12)


def test_the_demo_recipe_recovers_as_recover_does_on_the_demo_model():
    from hf_rankprune.recovery import DEMO_RECOVERY

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml")
    assert recipe.recovery == RecoveryConfig(**DEMO_RECOVERY)


def test_sigterm_keeps_the_checkpoints_and_the_same_command_resumes(checkpoints, tmp_path):
    """The user's path: `hf-rankprune recover` killed with SIGTERM mid-run, then run again, in fresh processes."""
    import signal
    import time

    _, pruned = checkpoints
    out = tmp_path / "recovered"
    work = recovery_work_dir(out)
    command = [sys.executable, "-m", "hf_rankprune", "recover", str(pruned), "--out", str(out), "--steps", "16",
               "--batch-size", "2", "--seq-len", "32", "--retrieval-mix", "0", "--save-steps", "2", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a busy machine may take minutes to start the process
    while not list(work.glob("checkpoint-*/.complete")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None and list(work.glob("checkpoint-*/.complete")), "no checkpoint while it ran"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "rerun the same command to resume" in stderr
    assert not out.exists() and list(work.glob("checkpoint-*/.complete"))
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    info = json.loads((out / "recovery.json").read_text())
    assert info["steps"] == 16 and info["resumed_from_step"] >= 2 and not work.exists()


def test_the_probe_evaluates_every_variant_after_recovery(checkpoints, tmp_path):
    original, _ = checkpoints
    out = tmp_path / "probe"
    argv = ["probe", str(original), "--num-samples", "4", "--seq-len", "256", "--num-heads", "3", "--scores", "decay",
            "--seeds", "0", "--lengths", "256", "--depths", "0.5", "--num-keys", "1", "--recover-steps", "2",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "probe.json").read_text())
    pruned_rows = {name: row for name, row in result["rows"].items() if name != "original"}
    assert len(pruned_rows) == 5  # highest, lowest, JRNP, decay, one random seed
    for name, row in pruned_rows.items():
        assert set(row["after_recovery"]) >= {"passkey.accuracy", "perplexity.perplexity"}, name
    assert result["best_score_after_recovery"] in result["rows"]


def test_the_pydoc_source_leaves_out_the_perplexity_documents():
    """Recovery may distil on Python's documentation, never on the documents perplexity is measured on."""
    from hf_rankprune.data.sources import _pydoc_training_texts
    from hf_rankprune.evaluation.texts import heldout_documents, load_documents

    texts = _pydoc_training_texts()
    held = {text for doc_id, text in heldout_documents() if doc_id.startswith("pydoc:")}
    assert held and texts and not set(texts) & held
    assert len(texts) == len(load_documents(("pydoc",))) - len(held)

