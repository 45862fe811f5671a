"""The user's path, end to end: a checkpoint on disk is loaded, pruned, saved, and loaded again in a fresh process.

Matrix: every family and form (dense, MoE, vision-language) x every plan kind x every way to load the result (with
hf_rankprune installed, with `trust_remote_code=True` and no hf_rankprune, with stock transformers for uniform plans).
In the fresh process the load report must be clean, every weight bit-equal to the pruned model's, the logits equal
to the original's with the removed heads zeroed (fp32, prefill and cached greedy decoding), and the vision tower of
vision-language models bit-equal to the original's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _pruning_reference import PLANS, greedy, zeroed_reference
from conftest import save_tiny_model
from families import FAMILIES
from transformers import AutoConfig

from hf_rankprune.arch import get_adapter, model_geometry
from hf_rankprune.checkpoint import SavedCheckpointError, load_report
from hf_rankprune.loading import load_model_and_tokenizer
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan, model_plan, save_pruned

FORMS = {  # name: (family, vision-language); every family of tests/families/, and its vision-language form
    f"{name}{'_vl' if vision else ''}": (name, vision)
    for name, family in sorted(FAMILIES.items())
    for vision in family.forms
}
KINDS = {  # plan kind: (kept value heads per layer, tests/_pruning_reference.py; stock layout)
    "uniform": ("uniform", False),
    "uniform_key_drop": ("uniform_key_drop", False),
    "per_layer": ("ragged_groups", False),
    "global": ("global", False),
    "key_groups": ("key_groups", False),
    "stock_layout": ("equal_counts", True),
}
PROMPT = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(5))
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """{case: folder} of pruned checkpoints, each beside `<case>.expected.pt` (weights and reference outputs)."""
    root = tmp_path_factory.mktemp("roundtrip")
    cases = {}
    for form, (family, vision) in FORMS.items():
        source = save_tiny_model(family, root / f"{form}.source", vision=vision)
        original, _ = load_model_and_tokenizer(str(source))
        for kind, (plan_name, stock) in KINDS.items():
            kept = PLANS[plan_name]
            model, tokenizer = load_model_and_tokenizer(str(source))
            if stock and get_adapter(model).family == "mamba2_ssd":
                continue  # its stock layout copies SSD groups, which the family refuses (tests/test_family_ssd.py)
            plan = PrunePlan.from_kept_heads(model_geometry(model), kept, settings={"kind": kind})
            apply_plan(model, plan.to_stock_layout() if stock else plan)
            folder = save_pruned(model, root / f"{form}-{kind}", tokenizer)
            reference = zeroed_reference(original, kept)
            with torch.no_grad():
                prefill = reference(PROMPT).logits
            sequences, decode = greedy(reference, PROMPT)
            expected = {
                "prompt": PROMPT,
                "state": {name: tensor.clone() for name, tensor in model.state_dict().items()},
                "prefill": prefill,
                "sequences": sequences,
                "decode": decode,
                "visual": original.model.visual.state_dict() if vision else None,
                "uniform": model_plan(model).loads_in_stock,  # stock transformers loads it
            }
            torch.save(expected, root / f"{form}-{kind}.expected.pt")
            cases[f"{form}-{kind}"] = folder
    return cases


CHECK = textwrap.dedent(
    """
    import json, sys
    mode, folders = sys.argv[1], sys.argv[2:]
    if mode == "package":
        import hf_rankprune  # noqa: F401
    else:
        sys.modules["hf_rankprune"] = None  # make `import hf_rankprune` fail, even though it is installed
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
    from _pruning_reference import greedy

    kwargs = {"trust_remote_code": True} if mode == "remote" else {}
    for folder in folders:
        expected = torch.load(folder + ".expected.pt")
        config = AutoConfig.from_pretrained(folder, **kwargs)
        vision = getattr(config, "vision_config", None) is not None
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        model, info = auto.from_pretrained(folder, output_loading_info=True, **kwargs)
        model.eval()
        AutoTokenizer.from_pretrained(folder, **kwargs)
        state = model.state_dict()
        differing = sorted(
            name for name, tensor in expected["state"].items()
            if name not in state or state[name].dtype != tensor.dtype or not torch.equal(state[name], tensor)
        )
        with torch.no_grad():
            prefill = model(expected["prompt"]).logits
        sequences, decode = greedy(model, expected["prompt"])
        visual_equal = None
        if vision:
            visual = model.model.visual.state_dict()
            visual_equal = all(torch.equal(visual[k], v) for k, v in expected["visual"].items())
        print("RESULT " + json.dumps({
            "folder": folder,
            "class": f"{type(model).__module__}.{type(model).__name__}",
            "report": {k: sorted(map(str, info[k])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")},
            "differing_weights": differing[:5],
            "extra_weights": sorted(set(state) - set(expected["state"]))[:5],
            "prefill_error": (prefill - expected["prefill"]).abs().max().item(),
            "decode_error": (decode - expected["decode"]).abs().max().item(),
            "same_tokens": torch.equal(sequences, expected["sequences"]),
            "visual_equal": visual_equal,
        }), flush=True)
    loaded = [m for m in sys.modules if m.startswith("hf_rankprune") and sys.modules[m] is not None]
    assert mode == "package" or not loaded, loaded
    """
)


def _run_check(mode: str, folders: list, tmp_path) -> dict[str, dict]:
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=tests_dir,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    result = subprocess.run(
        [sys.executable, "-c", CHECK, mode, *map(str, folders)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line[len("RESULT ") :]) for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return {row["folder"]: row for row in rows}


@pytest.mark.parametrize("mode", ["package", "remote", "stock"])
def test_reload_in_a_fresh_process(matrix, mode, tmp_path):
    """Every case loads back exactly; `stock` covers the uniform plans, `remote` the ragged ones (stock types need
    no code), `package` all of them."""
    selected, stock_cases = {}, set()
    for case, folder in matrix.items():
        uniform = torch.load(f"{folder}.expected.pt")["uniform"]
        if uniform:
            stock_cases.add(case)
        if mode == "package" or (mode == "stock") == uniform:
            selected[case] = folder
    assert selected
    rows = _run_check(mode, list(selected.values()), tmp_path)
    for case, folder in selected.items():
        row = rows[str(folder)]
        assert row["report"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}, (case, row)
        assert not row["differing_weights"] and not row["extra_weights"], (case, row)
        assert row["prefill_error"] <= TOLERANCE and row["decode_error"] <= TOLERANCE, (case, row)
        assert row["same_tokens"], (case, row)
        form = case.split("-")[0]
        assert row["visual_equal"] is (True if FORMS[form][1] else None), (case, row)
        if mode == "remote":
            assert row["class"].startswith("transformers_modules") and "RankPruned" in row["class"], (case, row)
        elif case in stock_cases:
            assert row["class"].startswith("transformers.models."), (case, row)
        expected_head = "ForConditionalGeneration" if FORMS[form][1] else "ForCausalLM"
        assert row["class"].endswith(expected_head), (case, row)


def test_vision_language_checkpoints_stay_vision_language(matrix):
    for case, folder in matrix.items():
        config = AutoConfig.from_pretrained(folder)
        vision = FORMS[case.split("-")[0]][1]
        assert (getattr(config, "vision_config", None) is not None) == vision, case
        if vision and case.endswith(("global", "per_layer", "key_groups")):
            assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"]
            assert config.text_config.model_type.startswith(config.model_type.removesuffix("_rankpruned"))


def test_moe_checkpoints_keep_the_stock_expert_layout(matrix):
    """Pruned MoE checkpoints store experts as the stock checkpoints do (per-expert keys), ragged or not."""
    from hf_rankprune.checkpoint import checkpoint_tensors

    for case, folder in matrix.items():
        if "_moe" in case.split("-")[0]:  # the Qwen MoE forms (Granite-4.0-H keeps its own fused expert layout)
            names = checkpoint_tensors(folder)
            assert any(".mlp.experts.0.gate_proj.weight" in name for name in names), case
            assert load_report(folder) == {"missing": [], "unexpected": [], "mismatched": []}, case


def test_save_self_check_refuses_a_checkpoint_that_would_not_reload(tmp_path, monkeypatch):
    """Without its checkpoint conversion a ragged MoE checkpoint would reload with re-initialised experts: the save
    refuses it and leaves no folder."""
    from transformers import conversion_mapping

    conversion_mapping.get_checkpoint_conversion_mapping("qwen3_next")  # builds the cache
    monkeypatch.setitem(conversion_mapping._checkpoint_conversion_mapping_cache, "qwen3_next_rankpruned", [])
    source = save_tiny_model("qwen3_next", tmp_path / "source")
    model, tokenizer = load_model_and_tokenizer(str(source))
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    with pytest.raises(SavedCheckpointError, match="experts"):
        save_pruned(model, tmp_path / "out", tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_prune_command_keeps_a_vision_language_model_whole(tmp_path):
    """`hf-rankprune prune` on a Qwen3.5 vision-language folder writes a vision-language model: same Auto class,
    vision tower bit-identical, processor files carried over, the card naming the base model given."""
    from transformers import AutoModelForImageTextToText

    from hf_rankprune.cli import main

    source = save_tiny_model("qwen3_5", tmp_path / "source", vision=True)
    (source / "preprocessor_config.json").write_text(json.dumps({"patch_size": 4, "merge_size": 2}))
    out = tmp_path / "out"
    args = ["prune", str(source), "--out", str(out), "--budget", "global", "--ratio", "0.25"]
    code = main([*args, "--num-samples", "2", "--seq-len", "64", "--quiet", "--base-model", "org/tiny-vl"])
    assert code == 0
    assert (out / "preprocessor_config.json").read_text() == (source / "preprocessor_config.json").read_text()
    card = (out / "README.md").read_text()
    assert "base_model: org/tiny-vl" in card and "pipeline_tag: image-text-to-text" in card
    assert "AutoModelForImageTextToText.from_pretrained" in card and "AutoModelForCausalLM" not in card
    original = AutoModelForImageTextToText.from_pretrained(source)
    pruned, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert type(pruned).__name__ == "Qwen3_5RankPrunedForConditionalGeneration"
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    visual = pruned.model.visual.state_dict()
    assert all(torch.equal(visual[name], value) for name, value in original.model.visual.state_dict().items())


def test_bad_base_model_is_refused_before_any_work(tmp_path, capsys):
    from hf_rankprune.cli import main

    source = save_tiny_model("qwen3_5", tmp_path / "source")
    code = main(["prune", str(source), "--out", str(tmp_path / "out"), "--base-model", "not a hub id"])
    assert code == 2 and "is not a Hub model id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
