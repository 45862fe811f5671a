"""hf_rankprune.evaluation: packaged `evaluate` metrics and `evaluate_model`, on inputs whose answers are known."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import build_tiny_model

from hf_rankprune.arch import model_geometry
from hf_rankprune.errors import EvaluationError
from hf_rankprune.evaluation import KNOWN_TASKS, evaluate_model, load_metric, register_task, registered_tasks
from hf_rankprune.evaluation import passkey as pk
from hf_rankprune.evaluation.api import greedy_generate, memory_layers, token_log_probs
from hf_rankprune.evaluation.tasks import check_options, get_tasks, option_defaults, task_names
from hf_rankprune.plan import PrunePlan
from hf_rankprune.surgery import apply_plan, model_plan

DEMO = Path(__file__).resolve().parents[1] / "hf_rankprune" / "assets" / "demo_model"


class CharTokenizer:
    """Characters -> ids 1..vocab-1 (id 0 is eos); enough of a tokenizer for the evaluation code."""

    eos_token_id = 0

    def __init__(self, vocab_size: int = 128):
        self.vocab_size = vocab_size

    def encode(self, text, add_special_tokens=False):
        return [1 + ord(c) % (self.vocab_size - 1) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 1) for i in ids if i != 0)


class FixedDistributionLM(torch.nn.Module):
    """Predicts the same next-token distribution at every position, whatever the context."""

    def __init__(self, probs: torch.Tensor, max_positions: int = 64):
        super().__init__()
        self.register_buffer("logp", probs.log())
        self.config = SimpleNamespace(max_position_embeddings=max_positions, vocab_size=probs.numel())

    def forward(self, input_ids, use_cache=False, **kwargs):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.logp.expand(b, t, -1).clone())


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_load_offline_from_package_folders(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    for name in KNOWN_TASKS:
        metric = load_metric(name)
        assert isinstance(metric, evaluate.Metric)
    with pytest.raises(ValueError, match="known"):
        load_metric("bleu")


def test_loading_a_metric_leaves_the_process_online(monkeypatch):
    """Offline mode covers the packaged metric's load only: an `hf:` calibration spec afterwards may reach the Hub."""
    import evaluate.config

    from hf_rankprune.evaluation import api

    for name in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(api, "_METRIC_CACHE", {})
    load_metric("perplexity")
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_EVALUATE_OFFLINE" not in os.environ
    assert evaluate.config.HF_EVALUATE_OFFLINE is False


def test_perplexity_metric_is_exp_mean_nll():
    log_probs = [[-0.5, -1.5, -2.0], [-0.25], [-3.0, -0.75]]
    flat = [x for row in log_probs for x in row]
    mean_nll = -sum(flat) / len(flat)
    out = load_metric("perplexity").compute(log_probs=log_probs)
    assert out["num_tokens"] == 6
    assert out["mean_nll"] == pytest.approx(mean_nll, rel=1e-12)
    assert out["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-12)
    with pytest.raises(ValueError):
        load_metric("perplexity").compute(log_probs=[[0.5]])


@pytest.mark.parametrize("stride", [None, 3])
def test_perplexity_of_model_with_known_distribution(stride):
    vocab = 8
    probs = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
    model = FixedDistributionLM(probs.float())
    tok = CharTokenizer(vocab)
    texts = ["abcdefg", "hello world", "xyz"]
    stream = [t for text in texts for t in [*tok.encode(text), tok.eos_token_id]]
    window = 5
    if stride is None:  # fixed windows: every token but the first of each window is scored
        scored = [t for i, t in enumerate(stream) if i % window != 0]
    else:  # sliding windows: every token but the very first is scored exactly once
        scored = stream[1:]
    expected = math.exp(-sum(math.log(float(probs.float()[t])) for t in scored) / len(scored))

    log_probs = token_log_probs(model, tok, texts, window=window, stride=stride)
    assert sum(len(r) for r in log_probs) == len(scored)
    out = evaluate_model(model, tok, tasks=("perplexity",), texts=texts, window=window, stride=stride, max_tokens=None)
    assert out["perplexity.num_tokens"] == len(scored)
    assert out["perplexity.perplexity"] == pytest.approx(expected, rel=1e-5)


def test_passkey_metric_known_predictions():
    metric = load_metric("passkey")
    out = metric.compute(
        predictions=[" 12345.", "12345", " 1234", "the key", " 98765 and 1"],
        references=["12345", "12346", "12345", "55555", "98765"],
        lengths=[512, 512, 1024, 1024, 1024],
        depths=[0.1, 0.5, 0.1, 0.5, 0.9],
    )
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["num_examples"] == 5
    assert out["accuracy@512"] == pytest.approx(1 / 2)
    assert out["accuracy@1024"] == pytest.approx(1 / 3)
    assert out["accuracy@depth0.1"] == pytest.approx(1 / 2)
    assert out["accuracy@depth0.5"] == 0.0
    assert out["accuracy@depth0.9"] == 1.0
    assert pk.extract_key(" 0042 x") == "0042" and pk.extract_key("none") == ""


def test_speed_metric_median():
    out = load_metric("speed").compute(num_tokens=[10, 10, 10], seconds=[1.0, 0.5, 2.0])
    assert out["decode_tokens_per_s"] == pytest.approx(10.0)
    assert out["decode_ms_per_token"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        load_metric("speed").compute(num_tokens=[10], seconds=[0.0])
    # the spread over runs comes with the median: 5 to 20 tokens/s around a median of 10
    assert (out["decode_tokens_per_s_min"], out["decode_tokens_per_s_max"]) == pytest.approx((5.0, 20.0))
    assert out["decode_spread"] == pytest.approx(1.5)


def test_speed_runs_that_disagree_are_a_warning(monkeypatch):
    from hf_rankprune.evaluation import api

    monkeypatch.setattr(api, "decode_runs", lambda *a, **k: ([32, 32, 32], [1.0, 1.0, 3.0]))
    model = FixedDistributionLM(torch.full((8,), 1 / 8))
    with pytest.warns(UserWarning, match=r"the 3 decoding runs disagree \(10.7 to 32.0 tokens/s, median 32.0\)"):
        out = evaluate_model(model, None, tasks=("speed",))
    assert out["speed.num_runs"] == 3


# ------------------------------------------------------------------------------------ passkey documents
def test_passkey_documents_fit_and_hide_the_key_at_depth():
    tok = CharTokenizer()
    for depth in (0.0, 0.5, 1.0):
        s = pk.make_passkey_sample(tok, 600, depth, "48213")
        n = len(tok.encode(s.prompt)) + len(tok.encode(s.answer))
        assert 600 - 25 <= n <= 600  # as close as one filler sentence allows
        assert s.prompt.startswith(pk.INTRO) and s.prompt.endswith(pk.QUESTION) and s.answer == " 48213"
        before, after = s.prompt[len(pk.INTRO) : -len(pk.QUESTION)].split(pk.needle("48213"))
        assert abs(len(before) / (len(before) + len(after)) - depth) < 0.05
    with pytest.raises(ValueError):
        pk.make_passkey_sample(tok, 50, 0.5, "48213")
    natural = pk.make_passkey_sample(tok, 400, 0.3, "777", ["One sentence.", "Another one."], rng=random.Random(0))
    assert "777" in natural.prompt
    a = pk.evaluation_samples(tok, (300,), (0.2, 0.8), num_keys=3, seed=0)
    b = pk.evaluation_samples(tok, (300,), (0.2, 0.8), num_keys=3, seed=0)
    c = pk.evaluation_samples(tok, (300,), (0.2, 0.8), num_keys=3, seed=1)
    assert len(a) == 6 and a == b and [s.key for s in a] != [s.key for s in c]
    assert all(len(s.key) == 5 for s in a)


# ------------------------------------------------------------------------------------------- memory
def test_memory_of_tiny_config_by_hand():
    model = build_tiny_model("qwen3_5")  # 3 linear layers (8 v-heads, d 16), 1 attention layer (2 KV heads, d 16)
    T = 1000
    out = evaluate_model(model, None, tasks=("memory",), context_length=T, batch_size=2)
    linear = 3 * 8 * 16 * 16 * 4
    conv = 3 * (2 * 2 * 16 + 8 * 16) * 4 * 4  # conv channels [q|k|v] x all 4 kernel columns (the cache keeps them), fp32
    kv = 2 * 2 * 16 * T * 4  # keys + values, fp32 model
    assert out["memory.linear_state_bytes"] == 2 * linear
    assert out["memory.conv_state_bytes"] == 2 * conv
    assert out["memory.kv_cache_bytes"] == 2 * kv
    assert out["memory.total_bytes"] == 2 * (linear + conv + kv)
    assert out["memory.num_linear_layers"] == 3 and out["memory.num_full_attention_layers"] == 1
    assert out["memory.linear_value_heads"] == 24 and out["memory.context_length"] == T
    assert out["memory.linear_state_bytes_bf16"] == 2 * linear // 2
    assert out["memory.sequences_per_gib"] == 2**30 // (linear + conv + kv)
    assert out["memory.sequences_per_gib_bf16_state"] == 2**30 // (linear // 2 + conv + kv)
    bf16 = evaluate_model(model, None, tasks=("memory",), context_length=T, kv_dtype_bytes=2)
    assert bf16["memory.kv_cache_bytes"] == kv // 2 and bf16["memory.linear_state_bytes"] == linear


def test_memory_of_a_ragged_model_is_the_plans_figure():
    """Evaluation and the plan use one formula: the pruned model measured as it is agrees with its plan."""
    model = build_tiny_model("qwen3_5")
    plan = PrunePlan.from_kept_heads(model_geometry(model), {0: [0, 1, 2, 3, 5], 1: [0, 4], 3: list(range(8))})
    apply_plan(model, plan)
    rows = memory_layers(model, 100)
    assert [r["num_heads"] for r in rows] == [5, 2, 0, 8] and rows[2]["layer_types"] == "full_attention"
    out = evaluate_model(model, None, tasks=("memory",), context_length=100)
    memory = model_plan(model).memory(context_length=100)
    assert out["memory.linear_state_bytes"] == memory.state_bytes_after == (5 + 2 + 8) * 16 * 16 * 4
    assert out["memory.conv_state_bytes"] == memory.conv_bytes_after
    assert out["memory.kv_cache_bytes"] == memory.kv_cache_bytes == 2 * 2 * 16 * 100 * 4
    assert out["memory.total_bytes"] == memory.total_bytes_after
    assert out["memory.linear_value_heads"] == 15


# ------------------------------------------------------------------------------------- decode, speed
def test_greedy_cached_decoding_matches_uncached_argmax():
    model = build_tiny_model("qwen3_5")
    ids = torch.randint(1, 128, (1, 20), generator=torch.Generator().manual_seed(0))
    new = greedy_generate(model, ids, 4)
    seq = ids
    expected = []
    with torch.no_grad():
        for _ in range(4):
            token = int(model(input_ids=seq, use_cache=False).logits[0, -1].argmax())
            expected.append(token)
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    assert new == expected


def test_speed_and_passkey_run_on_tiny_model():
    model = build_tiny_model("qwen3_5")
    tok = CharTokenizer()
    out = evaluate_model(
        model,
        tok,
        tasks=("speed", "passkey"),
        lengths=(300,),
        depths=(0.5,),
        num_keys=2,
        speed_prompt_length=8,
        speed_new_tokens=2,
        speed_runs=1,
    )
    assert out["speed.decode_tokens_per_s"] > 0 and out["speed.num_runs"] == 1
    assert 0.0 <= out["passkey.accuracy"] <= 1.0 and out["passkey.num_examples"] == 2
    assert "passkey.accuracy@300" in out and model.training is False


# -------------------------------------------------------------------------------------------- errors
class ExplodingModel(FixedDistributionLM):
    def forward(self, *args, **kwargs):  # validation must come before any work
        raise AssertionError("the model was called")


def test_errors_are_raised_before_any_work():
    model = ExplodingModel(torch.full((8,), 1 / 8), max_positions=1024)
    tok = CharTokenizer(8)
    with pytest.raises(ValueError, match="perplexity, passkey, memory, speed"):
        evaluate_model(model, tok, tasks=("perplexity", "rouge"))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        evaluate_model(model, tok, tasks=("passkey",), lengths=(512, 2048))
    with pytest.raises(ValueError, match="depths"):
        evaluate_model(model, tok, tasks=("passkey",), lengths=(512,), depths=(0.5, 1.5))
    with pytest.raises(ValueError, match="num_keys"):
        evaluate_model(model, tok, tasks=("passkey",), lengths=(512,), num_keys=0)
    with pytest.raises(ValueError, match="window"):
        evaluate_model(model, tok, tasks=("perplexity",), window=4096, texts=["abc"])
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate_model(model, None, tasks=("passkey",), lengths=(512,))


def test_unknown_options_and_bad_values_name_the_option():
    model, tok = ExplodingModel(torch.full((8,), 1 / 8), max_positions=1024), CharTokenizer(8)
    with pytest.raises(EvaluationError, match="num_key=3 is not allowed: no task takes it") as error:
        evaluate_model(model, tok, tasks=("passkey",), num_key=3)
    assert error.value.option == "num_key"
    with pytest.raises(EvaluationError) as error:
        evaluate_model(model, tok, tasks=("speed",), speed_runs=0)
    assert (error.value.option, error.value.reason) == ("speed_runs", "give an integer >= 1")
    # only the chosen tasks check their options against the model: memory takes any context length
    check_options({"lengths": (10**6,)}, get_tasks("memory"), max_positions=1024)
    with pytest.raises(EvaluationError, match="max_position_embeddings=1024"):
        check_options({"lengths": (10**6,)}, get_tasks(["memory", "passkey"]), max_positions=1024)


# ---------------------------------------------------------------------------------------- task registry
def test_registry_is_the_one_list_of_tasks():
    tasks = registered_tasks()
    assert tuple(tasks) == task_names() == KNOWN_TASKS == ("perplexity", "passkey", "memory", "speed")
    assert [t.name for t in tasks.values() if t.is_score] == ["perplexity", "passkey"]
    assert all(t.metric == t.name and t.label for t in tasks.values())
    assert option_defaults()["lengths"] == (512, 1024) and option_defaults()["seed"] == 0  # shared, one default
    assert [t.name for t in get_tasks(["speed", "perplexity", "speed"])] == ["perplexity", "speed"]  # registry order
    with pytest.raises(TypeError):
        tasks["rouge"] = tasks["speed"]  # read-only


def test_register_task_refuses_duplicates_and_conflicting_defaults(monkeypatch):
    from hf_rankprune.evaluation import tasks as registry

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    with pytest.raises(EvaluationError, match="'speed' is already registered"):
        register_task("speed", metric="speed", options={}, validate=lambda o, m: None, label="x")(lambda *a: {})
    with pytest.raises(EvaluationError, match="option 'seed' defaults to 1"):
        register_task("rouge", metric="rouge", options={"seed": 1}, validate=lambda o, m: None, label="x")(lambda *a: {})
    assert "rouge" not in registered_tasks()


def test_a_registered_task_reaches_evaluate_model_recipes_and_cards(monkeypatch):
    """One registration is all a new task needs: evaluate_model runs it, recipes take it and its options, cards
    label its figures."""
    from hf_rankprune.card import _eval_results
    from hf_rankprune.evaluation import tasks as registry
    from hf_rankprune.recipe import RecipeError, load_recipe

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))

    def check(options, max_positions):
        if options["repeats"] < 1:
            raise EvaluationError("bad", option="repeats", reason="give at least 1")

    @register_task("echo", metric="speed", options={"repeats": 2}, validate=check, label="echo test")
    def echo(model, tokenizer, options, progress):
        return {"score": float(options["repeats"]), "num_calls": 1}

    model = FixedDistributionLM(torch.full((8,), 1 / 8))
    assert evaluate_model(model, None, tasks=["echo"], repeats=3) == {"echo.score": 3.0, "echo.num_calls": 1}
    stage = "pruning_stage: {pruning_modifiers: {RankPruningModifier: {ratio: 0.25}}}\n"
    assert load_recipe(stage + "evaluation: {tasks: [echo, memory], repeats: 4}\n").evaluation["repeats"] == 4
    with pytest.raises(RecipeError, match="evaluation.repeats=0 is not allowed: give at least 1"):
        load_recipe(stage + "evaluation: {tasks: [memory], repeats: 0}\n")  # every option given is checked
    results = _eval_results({"echo.score": 3.0, "echo.num_calls": 1, "memory.total_bytes": 10})
    assert [(r.metric_name, r.dataset_name) for r in results] == [("echo.score", "echo test")]


# ---------------------------------------------------------------------------------------- demo model
@pytest.mark.skipif(
    not (DEMO / "model.safetensors").exists(), reason="demo model not trained (scripts/train_demo_model.py)"
)
def test_demo_model_retrieves_passkeys_at_512():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(DEMO)
    assert model.config.model_type == "qwen3_5_text"
    out = evaluate_model(model, tok, tasks=("passkey",), lengths=(512,), depths=(0.1, 0.5, 0.9), num_keys=4, seed=3)
    assert out["passkey.accuracy@512"] >= 0.9


# ------------------------------------------------------------------------------------------ held-out text
def test_heldout_text_is_packaged_held_out_and_large_enough(monkeypatch):
    """Perplexity reads the held-out text shipped in the package: the same documents on every machine (no Debian
    package read), all of them held out from the demo model's training, >= 20,000 tokens of the demo tokenizer."""
    from transformers import AutoTokenizer

    from hf_rankprune.evaluation import texts

    assert texts.HELDOUT_PATH.is_file() and texts.HELDOUT_PATH.name.endswith(".gz")
    for name in ("FORTUNES_DIR", "DEVIL_DICT", "PYDOC_SOURCES"):  # as on a machine without those packages
        monkeypatch.setattr(texts, name, Path("/nonexistent"))
    documents = texts.heldout_documents()
    assert all(texts.is_heldout(doc_id) for doc_id, _ in documents)
    assert {doc_id.split(":")[0] for doc_id, _ in documents} >= {"pydoc", "pydoc-rst", "fortunes"}
    tok = AutoTokenizer.from_pretrained(DEMO)
    count = sum(len(tok.encode(text, add_special_tokens=False)) + 1 for text in texts.heldout_texts())
    assert 20_000 <= count <= 40_000
    assert texts.HELDOUT_PATH.stat().st_size < 64 * 1024


def test_heldout_text_is_package_data():
    """The wheel carries the asset: pyproject's package-data globs match its path."""
    import fnmatch
    tomllib = pytest.importorskip("tomllib")

    from hf_rankprune.evaluation import texts

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = texts.HELDOUT_PATH.relative_to(root / "hf_rankprune").as_posix()
    assert any(fnmatch.fnmatch(relative, p.replace("**/", "")) or fnmatch.fnmatch(relative, p) for p in
               patterns["hf_rankprune"])


def test_perplexity_shortfall_is_a_warning_with_the_count():
    probs = torch.full((8,), 1 / 8)
    model, tok = FixedDistributionLM(probs), CharTokenizer(8)
    with pytest.warns(UserWarning, match=r"only 12 tokens, fewer than the 1,000 requested"):
        out = evaluate_model(model, tok, tasks=("perplexity",), texts=["abcdefghijk"], window=5, max_tokens=1000)
    assert out["perplexity.max_tokens"] == 1000 and out["perplexity.window"] == 5
    assert out["perplexity.num_tokens"] == 12 - 3  # 3 windows of 5, 5, 2 tokens; each window's first is context


def test_results_state_the_examples_behind_each_passkey_figure():
    probs = torch.full((128,), 1 / 128)
    model, tok = FixedDistributionLM(probs, max_positions=4096), CharTokenizer(128)
    out = evaluate_model(model, tok, tasks=("passkey",), lengths=(256, 300), depths=(0.5,), num_keys=3)
    assert out["passkey.num_examples"] == 6
    assert out["passkey.num_examples@256"] == out["passkey.num_examples@300"] == 3
