import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_model

from hf_rankprune.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code, err, pattern):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and pattern in lines[0], err
    assert "Traceback" not in err


def test_analyze_writes_the_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    code, stdout, _ = run_cli(capsys, "analyze", tiny_model_dir, "--num-samples", 5, "--seq-len", 192, "--quiet",
                              "--out", out)  # fmt: skip
    assert code == 0 and "low-rank" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 5 and report["grid"] == [64, 128, 192]
    assert sorted(report["categories"]) == ["long_context", "math", "repetition_char", "repetition_number", "technical"]
    assert {p.name for p in (out / "figures").iterdir()} == {"rank_trajectories.png", "rank_heatmap.png",
                                                             "rank_histogram.png"}  # fmt: skip
    # an existing report is refused, and kept intact
    before = (out / "report.json").read_bytes()
    code, _, err = run_cli(capsys, "analyze", tiny_model_dir, "--num-samples", 2, "--seq-len", 64, "--out", out)
    assert_clean_error(code, err, "exists and is not empty")
    assert (out / "report.json").read_bytes() == before
    code, _, _ = run_cli(capsys, "analyze", tiny_model_dir, "--num-samples", 2, "--seq-len", 64, "--quiet",
                         "--overwrite", "--out", out)  # fmt: skip
    assert code == 0 and json.loads((out / "report.json").read_text())["num_samples"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["analysis"]  # no staging folders left behind


def test_analyze_on_a_file_of_texts(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "notes.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"note {i}: " + "the state of a head " * 30}) for i in range(5)))
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, "analyze", tiny_model_dir, "--data", data, "--num-samples", 2, "--seq-len", 128,
                         "--quiet", "--out", out)  # fmt: skip
    assert code == 0 and list(json.loads((out / "report.json").read_text())["categories"]) == ["notes"]


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--num-samples", "0"], "num_samples=0 is not allowed"),
        (["--seq-len", "32"], "shorter than the first grid point"),
        (["--rank-eps", "2"], "rank_eps=2.0 is not allowed"),
        (["--data", "missing.jsonl"], "missing.jsonl"),
    ],
)
def test_analyze_bad_inputs(tiny_model_dir, tmp_path, capsys, argv, pattern):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "analyze", tiny_model_dir, *argv, "--out", out)
    assert_clean_error(code, err, pattern)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_analyze_refuses_models_it_cannot_handle(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64)).save_pretrained(llama)  # fmt: skip
    code, _, err = run_cli(capsys, "analyze", llama, "--out", tmp_path / "a")
    assert_clean_error(code, err, "Unsupported architecture model_type='llama'")
    full = save_tiny_model("qwen3_next", tmp_path / "full", layer_types=["full_attention"] * 4)
    code, _, err = run_cli(capsys, "analyze", full, "--out", tmp_path / "b")
    assert_clean_error(code, err, "no linear-attention layers")
    code, _, err = run_cli(capsys, "analyze", tmp_path, "--out", tmp_path / "c")
    assert_clean_error(code, err, "is not a model folder")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_console_script_exit_code(tmp_path):
    script = Path(sys.executable).with_name("hf-rankprune")
    result = subprocess.run([str(script), "analyze", str(tmp_path), "--out", str(tmp_path / "x")],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
