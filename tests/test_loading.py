"""Models that do not load cleanly are refused before any work, with one line that says what is wrong.

transformers fills missing or re-shaped weights with random values and only logs it; hf_rankprune must never calibrate
on, prune or save such a model. Every case runs the real command line on a checkpoint folder on disk.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _pruning_reference import PLANS
from conftest import save_tiny_model
from safetensors.torch import load_file, save_file

from hf_rankprune.arch import model_geometry
from hf_rankprune.checkpoint import CheckpointError, read_safetensors_header
from hf_rankprune.cli import main
from hf_rankprune.loading import ModelLoadError, load_model_and_tokenizer
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan, save_pruned


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return save_tiny_model("qwen3_next", tmp_path_factory.mktemp("loading") / "source")


def _copy(source, tmp_path):
    return shutil.copytree(source, tmp_path / "model")


def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _edit_config(folder, edit):
    path = folder / "config.json"
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values))


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(args, tmp_path, capsys, match):
    """Run the CLI; it must exit 2 with one `error:` line matching `match`, and write no output."""
    code = main([*args, "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], (code, lines)
    assert match in errors[0], errors[0]
    assert not (tmp_path / "out").exists()
    return errors[0]


CASES = {
    "missing tensor": (
        lambda f: _edit_weights(f, lambda t: t.pop("model.layers.1.linear_attn.out_proj.weight")),
        "1 missing (model.layers.1.linear_attn.out_proj.weight)",
    ),
    "unexpected tensor": (
        lambda f: _edit_weights(f, lambda t: t.update({"model.layers.0.linear_attn.extra.weight": torch.zeros(2)})),
        "1 unexpected (model.layers.0.linear_attn.extra.weight)",
    ),
    "head counts that disagree with the weights": (
        lambda f: _edit_config(f, lambda v: v.update(linear_num_value_heads=4)),
        "model.layers.0.linear_attn",
    ),
    "truncated weights": (
        lambda f: f.joinpath("model.safetensors").write_bytes(f.joinpath("model.safetensors").read_bytes()[:-1000]),
        "is truncated",
    ),
    "garbage header": (
        lambda f: f.joinpath("model.safetensors").write_bytes(b"\xff" * 64 + f.joinpath("model.safetensors").read_bytes()),
        "garbage or truncated safetensors header",
    ),
    "empty weights file": (lambda f: f.joinpath("model.safetensors").write_bytes(b""), "not a safetensors file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_checkpoints_are_refused_by_every_command(case, source, tmp_path, capsys):
    model = _copy(source, tmp_path)
    damage, match = CASES[case]
    damage(model)
    before = _snapshot(model)
    small = ["--num-samples", "1", "--seq-len", "32", "--quiet"]
    _refused(["analyze", str(model), *small], tmp_path, capsys, match)
    _refused(["prune", str(model), *small], tmp_path, capsys, match)
    _refused(["eval", str(model), "--tasks", "memory"], tmp_path, capsys, match)
    assert _snapshot(model) == before


def test_pruned_model_whose_plan_disagrees_with_its_weights_is_refused(source, tmp_path, capsys):
    model, tokenizer = load_model_and_tokenizer(str(source))
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    folder = save_pruned(model, tmp_path / "pruned", tokenizer)

    def drop_a_head(values):
        layer = values["rankprune_plan"]["layers"][0]
        layer["kept_value_heads"] = layer["kept_value_heads"][:-1]
        layer["value_to_key"] = layer["value_to_key"][:-1]

    _edit_config(folder, drop_a_head)
    message = _refused(["eval", str(folder), "--tasks", "memory"], tmp_path, capsys, "error")
    assert "model.layers.0.linear_attn" in message or "plan" in message, message


def test_device_map_naming_a_missing_accelerator_is_refused_before_loading(source, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device_map in ("cuda:7", "cuda"):
        _refused(["analyze", str(source), "--device-map", device_map], tmp_path, capsys, "no CUDA device")
    with pytest.raises(ModelLoadError, match="not a device"):
        load_model_and_tokenizer(str(source), device_map="warp-drive:0")


def test_header_reader_checks_the_data_is_whole(source, tmp_path):
    tensors = read_safetensors_header(source / "model.safetensors")
    assert tensors["model.layers.0.linear_attn.A_log"] == ((8,), torch.float32)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((source / "model.safetensors").read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors_header(broken)
