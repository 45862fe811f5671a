"""What a newcomer meets first (issue 17): --version, CLI defaults that match the demo, quiet CPU runs."""

import logging
from pathlib import Path

import pytest

from hf_rankprune.cli import build_parser, main
from hf_rankprune.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-rankprune {__import__('hf_rankprune').__version__}"


def test_eval_and_probe_num_keys_default_is_the_demo_recipes():
    demo = load_recipe(REPO / "recipes" / "demo.yaml").evaluation
    parser = build_parser()
    assert parser.parse_args(["eval", "--out", "r.json"]).num_keys == demo["num_keys"] == 4
    assert parser.parse_args(["probe", "--out", "p"]).num_keys == 4


def test_gpu_kernel_notices_are_dropped_on_cpu_only(monkeypatch):
    import torch

    import hf_rankprune  # noqa: F401  (installs the filter)

    logger = logging.getLogger("transformers.integrations.hub_kernels")
    notice = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "`chunk_gated_delta_rule` is falling back to "
                               "its reference PyTorch implementation because `flash-linear-attention` is not "
                               "installed.", None, None)  # fmt: skip
    other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "something else", None, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not logger.filter(notice) and logger.filter(other)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # on a GPU machine the advice is useful
    assert logger.filter(notice)


@pytest.mark.parametrize("command", ["analyze", "prune", "probe"])
def test_seq_len_beyond_the_models_context_is_refused_before_loading(tmp_path, capsys, command):
    """`--seq-len` past max_position_embeddings is refused like `eval --lengths` is (the demo model has 2,048)."""
    out = tmp_path / "out"
    code = main([command, "--seq-len", "100000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--seq-len 100000 goes beyond the model's context (max_position_embeddings=2048)" in err
    assert not out.exists()


def test_results_print_rounded_in_a_table():
    from hf_rankprune.evaluation import results_table

    table = results_table({"original": {"passkey.accuracy": 1.0, "perplexity.perplexity": 53.7512345,
                                        "memory.kv_cache_bytes": 524288, "perplexity.num_tokens": 19961},
                           "pruned": {"passkey.accuracy": 0.825, "perplexity.perplexity": 93.0833,
                                      "memory.kv_cache_bytes": 524288, "perplexity.num_tokens": 19961}})  # fmt: skip
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "original", "pruned"] and set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["passkey.accuracy", "100.0%", "82.5%"]
    assert lines[3].split() == ["perplexity.perplexity", "53.75", "93.08"]
    assert lines[4].split() == ["memory.kv_cache_bytes", "524,288", "B", "524,288", "B"]
    assert lines[5].split() == ["perplexity.num_tokens", "19,961", "19,961"]


def test_the_local_hub_starts_on_its_own(tmp_path):
    """`python tests/hub_server.py` serves a Hub the real client talks to (for trying `push` by hand)."""
    import subprocess
    import sys

    from huggingface_hub import HfApi

    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "hub_server.py"), "--root", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = server.stdout.readline()
        url = line.split()[3]
        assert line.startswith("local Hub at http://127.0.0.1:")
        api = HfApi(endpoint=url, token="anything")
        api.create_repo("me/try")
        assert api.model_info("me/try").id == "me/try"
    finally:
        server.terminate()
        server.wait(timeout=10)
