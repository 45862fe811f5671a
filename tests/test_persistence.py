"""Pruned models saved with `save_pruned` load back with identical logits: stock transformers for uniform plans (in a
process that never imports hf_rankprune), `import hf_rankprune` for ragged plans, and `trust_remote_code=True` for
ragged plans where hf_rankprune cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _pruning_reference import PLANS
from conftest import build_tiny_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import hf_rankprune.modeling  # noqa: F401  (registers the *_rankpruned model types)
from hf_rankprune.arch import model_geometry
from hf_rankprune.plan import PlanError, PrunePlan
from hf_rankprune.surgery import PLAN_FILE, apply_plan, save_pruned


def _tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "hello": 1, "world": 2}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits.float()


def _pruned(model, kind: str, dtype=torch.float32):
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS[kind], settings={"kind": kind}))
    return model.to(dtype)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, load_tiny_checkpoint):
    """Folders of pruned models and their in-memory logits: {name: (folder, logits, model)}."""
    root = tmp_path_factory.mktemp("pruned")
    cases = {
        "uniform_next": ("qwen3_next", "uniform_key_drop", torch.float32, None),
        "uniform_35": ("qwen3_5", "uniform", torch.float32, None),
        "ragged_next": ("qwen3_next", "global", torch.float32, None),
        "ragged_35moe": ("qwen3_5_moe", "ragged_groups", torch.float32, None),
        "ragged_35_bf16_sharded": ("qwen3_5", "key_groups", torch.bfloat16, "60KB"),
    }
    out = {}
    for name, (family, kind, dtype, shard) in cases.items():
        model = _pruned(load_tiny_checkpoint(family), kind, dtype)
        folder = save_pruned(model, root / name, tokenizer=_tokenizer(), max_shard_size=shard)
        out[name] = (folder, _logits(model), model)
    return out


def test_folder_contents(saved):
    for name, (folder, _, model) in saved.items():
        files = set(os.listdir(folder))
        assert {"config.json", PLAN_FILE, "tokenizer.json"} <= files
        assert any(f.endswith(".safetensors") for f in files) and not any(f.endswith(".bin") for f in files)
        config = json.loads((folder / "config.json").read_text())
        plan = PrunePlan.from_json_file(folder / PLAN_FILE)
        assert config["rankprune_plan"] == plan.to_dict() == model.config.rankprune_plan
        ragged = name.startswith("ragged")
        assert ("auto_map" in config) == ragged
        assert config["model_type"].endswith("_rankpruned") == ragged
        if ragged:
            assert {"modeling_rankpruned.py", "configuration_rankpruned.py"} <= files
        else:
            assert config["linear_num_value_heads"] == plan.layers[0].num_kept_value_heads
    assert "model.safetensors.index.json" in os.listdir(saved["ragged_35_bf16_sharded"][0])
    assert not [p for p in saved["uniform_35"][0].parent.iterdir() if p.name.startswith(".")]


def test_registered_model_types_load_in_process(saved):
    for name, (folder, logits, model) in saved.items():
        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        assert type(loaded) is type(model), name
        reference = model.state_dict()
        for key, value in loaded.state_dict().items():
            assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), (name, key)
        if "bf16" not in name:  # bf16: stock from_pretrained recomputes rotary buffers differently from `.to()`
            assert torch.equal(_logits(loaded), logits), name
        else:
            saved_logits = _logits(loaded)
            torch.save(saved_logits, folder.parent / f"{name}.inprocess.pt")


SUBPROCESS = textwrap.dedent(
    """
    import sys
    sys.modules["hf_rankprune"] = None  # make `import hf_rankprune` fail, even if it is installed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    for name, folder, remote in [line.split("|") for line in sys.argv[1:]]:
        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        kwargs = {"trust_remote_code": True} if remote == "1" else {}
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
        AutoTokenizer.from_pretrained(folder, **kwargs)
        with torch.no_grad():
            torch.save(model(ids).logits.float(), folder + ".subprocess.pt")
        print("RESULT", name, type(model).__module__, type(model).__name__)
    assert not [m for m in sys.modules if m.startswith("hf_rankprune") and sys.modules[m] is not None]
    """
)


def test_load_without_hf_rankprune(saved, tmp_path):
    args = [f"{name}|{folder}|{int(name.startswith('ragged'))}" for name, (folder, _, _) in saved.items()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 2)[1:] for line in result.stdout.splitlines() if line.startswith("RESULT "))
    assert lines["uniform_next"].startswith("transformers.models.qwen3_next")
    assert lines["uniform_35"].startswith("transformers.models.qwen3_5")
    assert lines["ragged_next"].startswith("transformers_modules") and "RankPruned" in lines["ragged_next"]
    for name, (folder, logits, _) in saved.items():
        loaded = torch.load(f"{folder}.subprocess.pt")
        if "bf16" in name:
            logits = torch.load(folder.parent / f"{name}.inprocess.pt")
        assert torch.equal(loaded, logits), name


def test_existing_folder_refused_and_overwrite(tmp_path, load_tiny_checkpoint):
    """A folder of the user's is never replaced, not even with overwrite=True; an earlier output of this tool is."""
    model = _pruned(load_tiny_checkpoint("qwen3_5"), "uniform")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pruned(model, target)
    with pytest.raises(FileExistsError, match="did not write"):
        save_pruned(model, target, overwrite=True)
    assert os.listdir(target) == ["keep.txt"]
    (target / "keep.txt").unlink()
    save_pruned(model, target)
    first = (target / "model.safetensors").read_bytes()
    save_pruned(model, target, overwrite=True)
    assert (target / PLAN_FILE).exists() and (target / "model.safetensors").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch, load_tiny_checkpoint):
    model = _pruned(load_tiny_checkpoint("qwen3_next"), "global")

    class Broken:
        def save_pretrained(self, path):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_pruned(model, tmp_path / "out", tokenizer=Broken())
    assert list(tmp_path.iterdir()) == []


def test_unpruned_model_is_refused(tmp_path):
    with pytest.raises(PlanError, match="no prune plan"):
        save_pruned(build_tiny_model("qwen3_5"), tmp_path / "out")


def test_saved_plan_path_is_a_pathlike(saved):
    assert isinstance(saved["uniform_35"][0], Path)
