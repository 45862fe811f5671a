"""The demo model's training script: its step schedule, its loss and the command it records in the card."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_model.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_schedule_runs_the_stages_in_order_each_with_its_warm_up_and_curriculum(script):
    total = 2000
    plan = [script.schedule(step, total) for step in range(total)]
    boundary = round(total * script.STAGES[0].share / sum(s.share for s in script.STAGES))
    assert all(stage is script.STAGES[0] for stage, _, _ in plan[:boundary])
    assert all(stage is script.STAGES[1] for stage, _, _ in plan[boundary:])
    for first, last, stage in ((0, boundary, script.STAGES[0]), (boundary, total, script.STAGES[1])):
        lengths = [length for _, length, _ in plan[first:last]]
        assert lengths == sorted(lengths) and lengths[0] == 128 and lengths[-1] == 1024  # short rows first
        lrs = [lr for _, _, lr in plan[first:last]]
        assert lrs[0] == pytest.approx(stage.lr / stage.warmup, rel=1e-3)  # a fresh warm-up
        assert max(lrs) <= stage.lr and lrs[-1] < 0.1 * stage.lr  # cosine decay to 5% of the peak
    assert plan[boundary][2] < plan[boundary - 1][2] * 10  # the restart warms up, it does not jump to the peak


def test_loss_weights_the_answer_and_reports_its_own_loss(script):
    vocab = 7
    labels = torch.tensor([[-100, 1, 2, 3, 4]])
    weights = torch.tensor([[1.0, 1.0, 1.0, script.ANSWER_WEIGHT, script.ANSWER_WEIGHT]])
    logits = torch.zeros(1, 5, vocab)
    logits[0, 2, 3] = 5.0  # position 2 predicts label 3 (an answer token) well
    loss, answer = script.weighted_lm_loss(logits, labels, weights)
    uniform = math.log(vocab)
    good = -torch.log_softmax(logits[0, 2], -1)[3].item()
    assert answer.item() == pytest.approx((good + uniform) / 2)
    assert loss.item() == pytest.approx((2 * uniform + 10 * good + 10 * uniform) / 22)
    _, no_answer = script.weighted_lm_loss(logits, labels, torch.ones(1, 5))
    assert math.isnan(no_answer.item())


def test_recorded_command_leaves_out_where_the_model_was_written(script):
    command = script.training_command(["--out", "/tmp/x", "--steps", "5"])
    assert command == "python scripts/train_demo_model.py --steps 5"
    assert script.training_command(["--out=/tmp/x"]) == "python scripts/train_demo_model.py"
    assert script.training_command([]) == "python scripts/train_demo_model.py"


def test_replace_folder_swaps_in_the_new_model_whole(script, tmp_path):
    target, new = tmp_path / "demo_model", tmp_path / "demo_model.partial"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    (target / "stale.json").write_text("{}")
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    script.replace_folder(new, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_model"]
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert (target / "model.safetensors").read_text() == "new"
