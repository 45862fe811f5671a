"""The retrieval calibration objective of the output-aware head scores: retrieval documents (hf_rankprune.data.retrieval),
per-token weights in CalibrationSamples, the weighted kl / taylor, the retrieval_mix / answer_weight settings."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer, save_tiny_model

from hf_rankprune import RankPruneConfig, RankPruner, get_adapter
from hf_rankprune.card import _importance_text
from hf_rankprune.cli import main
from hf_rankprune.config import ConfigError
from hf_rankprune.data import CalibrationDataError, CalibrationSamples, load_calibration_samples
from hf_rankprune.data.retrieval import (
    RETRIEVAL_CATEGORY,
    RETRIEVAL_FILLER,
    excluded_keys,
    mix_retrieval,
    retrieval_count,
    retrieval_documents,
)
from hf_rankprune.evaluation import passkey as pk
from hf_rankprune.output_scores import head_masks, importance_scores, kl_scores, taylor_scores, with_retrieval

SEQ_LEN = 256  # the tiny tokenizer needs about 180 tokens for a passkey document
SMALL = dict(num_samples=4, seq_len=SEQ_LEN, batch_size=4, num_heads=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("qwen3_5")


def _answer(tokenizer, ids: torch.Tensor, weights: torch.Tensor, weight: float) -> str:
    """The tokens whose predictions carry `weight` (position t's weight weighs the prediction of token t + 1)."""
    positions = torch.nonzero(weights == weight).flatten()
    return tokenizer.decode(ids[positions + 1])


def test_retrieval_documents_are_seeded_disjoint_from_the_evaluation_and_weight_the_answer(tokenizer):
    docs = retrieval_documents(tokenizer, 6, SEQ_LEN, seed=0, answer_weight=7.0)
    again = retrieval_documents(tokenizer, 6, SEQ_LEN, seed=0, answer_weight=7.0)
    other = retrieval_documents(tokenizer, 6, SEQ_LEN, seed=1, answer_weight=7.0)
    torch.testing.assert_close(docs.input_ids, again.input_ids)
    torch.testing.assert_close(docs.weights, again.weights)
    assert not torch.equal(docs.input_ids, other.input_ids)
    assert docs.categories == [RETRIEVAL_CATEGORY] * 6 and docs.input_ids.shape == (6, SEQ_LEN)

    evaluation = pk.evaluation_samples(tokenizer, lengths=(SEQ_LEN,), depths=(0.1, 0.5, 0.9), num_keys=4)
    evaluation_keys = {sample.key for sample in evaluation}
    depths = set()
    for ids, weights in zip(docs.input_ids, docs.weights):
        text = tokenizer.decode(ids)
        answer = _answer(tokenizer, ids, weights, 7.0)
        key = answer.strip()
        assert answer == " " + key and len(key) == 5 and key.isdigit()
        assert text.count(key) == 3  # twice in the needle, once as the answer
        assert key not in evaluation_keys and key not in excluded_keys()
        assert not any(sentence in text for sentence in pk.DEFAULT_FILLER)  # not the evaluation's filler
        assert any(sentence in text for sentence in RETRIEVAL_FILLER)
        # 1 on the prompt's predictions, the answer weight on the answer's, 0 from the answer's last token on
        answer_start = int(torch.nonzero(weights == 7.0).min())
        assert (weights[:answer_start] == 1).all() and (weights[answer_start + len(tokenizer.tokenize(answer)) :] == 0).all()
        depths.add(text.index(key) // 50)
    assert len(depths) > 1  # keys at different depths
    # the evaluation's own keys (seed 0, its default 100 examples) are all excluded, and evaluation stays as it was
    assert set(pk.evaluation_keys(100)) <= excluded_keys()
    rng = random.Random(pk.EVAL_SEED_OFFSET)
    assert [sample.key for sample in evaluation] == [pk.random_key(rng) for _ in range(len(evaluation))]

    with pytest.raises(CalibrationDataError, match="too short for a retrieval document"):
        retrieval_documents(tokenizer, 1, 40)


def test_mix_interleaves_documents_into_a_prefix_of_the_samples(tokenizer):
    text = load_calibration_samples(None, tokenizer, 8, SEQ_LEN, seed=0)
    mixed, info = mix_retrieval(text, tokenizer, 0.25, 9.0, seed=0)
    assert retrieval_count(8, 0.25) == 2 and retrieval_count(8, 0.0) == 0 and retrieval_count(2, 0.01) == 1
    assert len(mixed) == 8 and mixed.categories.count(RETRIEVAL_CATEGORY) == 2
    assert mixed.categories[:4].count(RETRIEVAL_CATEGORY) == 1  # spread: one in each half
    kept = [i for i, c in enumerate(mixed.categories) if c != RETRIEVAL_CATEGORY]
    torch.testing.assert_close(mixed.input_ids[kept], text.input_ids[:6])  # the first 6 text rows, in order
    assert (mixed.weights[kept] == 1).all()
    assert info["retrieval_samples"] == 2 and info["answer_tokens"] == int((mixed.weights == 9.0).sum()) > 0
    assert mix_retrieval(text, tokenizer, 0.0, 9.0)[0] is text
    shard = mixed.shard(1, 2)  # weights travel with their rows
    torch.testing.assert_close(shard.weights, mixed.weights[1::2])
    with pytest.raises(CalibrationDataError, match="one weight per token"):
        CalibrationSamples(text.input_ids, text.categories, torch.ones(8, 3))
    with pytest.raises(CalibrationDataError, match=">= 0"):
        CalibrationSamples(text.input_ids, text.categories, -torch.ones(8, SEQ_LEN))


def test_weighted_kl_equals_the_hand_computed_weighted_mean(model):
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 320, (2, 24), generator=generator)
    weights = torch.rand(2, 24, generator=generator) * (torch.rand(2, 24, generator=generator) > 0.3)
    samples = CalibrationSamples(ids, ["a", "b"], weights)
    config = RankPruneConfig(score="kl", num_samples=2, seq_len=24, batch_size=2, retrieval_mix=0.0)
    result = kl_scores(model, samples, config, progress=False)
    adapter = get_adapter(model)
    layers = adapter.linear_layers()
    differences = []
    with torch.no_grad():
        reference = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
        for position, head in ((0, 0), (1, 5), (2, 7)):
            masks = [None] * len(layers)
            masks[position] = torch.ones(layers[position].num_value_heads)
            masks[position][head] = 0
            with head_masks(adapter, masks):
                ablated = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
            kl = (reference.exp() * (reference - ablated)).sum(dim=-1)  # [2, 24]
            expected = float((kl * weights).sum() / weights.sum())
            # the code's KL is float32 (KLs of ~1e-5 from differences of log-probabilities): agree to 0.5%
            assert result.scores[position][head] == pytest.approx(expected, rel=5e-3)
            differences.append(abs(float(kl.mean()) / expected - 1))
    assert max(differences) > 0.05  # the weighted mean is not the plain mean
    assert result.measured["token_weights"] == "per token"
    # uniform weights give the unweighted scores exactly
    uniform = kl_scores(model, CalibrationSamples(ids, ["a", "b"], torch.ones(2, 24)), config, progress=False)
    plain = kl_scores(model, ids, config, progress=False)
    for a, b in zip(uniform.scores, plain.scores):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert plain.measured["token_weights"] == "uniform" and plain.measured["retrieval_samples"] == 0


def test_weighted_taylor_ignores_positions_of_weight_zero(model):
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(4))
    weights = torch.ones(2, 24)
    weights[1] = 0  # only the first sample counts
    config = RankPruneConfig(score="taylor", num_samples=2, seq_len=24, batch_size=2, retrieval_mix=0.0)
    weighted = taylor_scores(model, CalibrationSamples(ids, ["a", "b"], weights), config, progress=False)
    alone = taylor_scores(model, ids[:1], config, progress=False)
    for a, b in zip(weighted.scores, alone.scores):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)


def test_the_mix_changes_what_is_measured_and_the_plan_and_card_record_it(model, tokenizer):
    text = load_calibration_samples(None, tokenizer, 4, SEQ_LEN, seed=0)
    plain = importance_scores(model, RankPruneConfig(score="kl", retrieval_mix=0.0, **SMALL), text, progress=False,
                              tokenizer=tokenizer)  # fmt: skip
    config = RankPruneConfig(score="kl", retrieval_mix=0.5, answer_weight=20.0, **SMALL)
    mixed = importance_scores(model, config, text, progress=False, verbose=False, tokenizer=tokenizer)
    assert plain.measured["retrieval_samples"] == 0 and plain.measured["retrieval_mix"] == 0.0
    measured = mixed.measured
    assert measured["retrieval_samples"] == 2 and measured["answer_weight"] == 20.0 and measured["answer_tokens"] > 0
    assert measured["token_weights"] == "per token" and measured["samples"] == 4
    assert not all(np.allclose(a, b) for a, b in zip(plain.scores, mixed.scores))
    # the same samples through the pruner: the plan records the settings and what was measured, the card says it
    samples = with_retrieval(text, tokenizer, config)[0]
    pruner = RankPruner(model, tokenizer, config.replace(budget="per_layer"))
    pruner.measure_importance(samples, progress=False, verbose=False)
    settings = pruner.plan().settings
    assert settings["retrieval_mix"] == 0.5 and settings["answer_weight"] == 20.0
    assert settings["score_measured"]["retrieval_samples"] == 2
    assert "2 of them retrieval documents" in _importance_text(settings)
    assert "answer token weighted 20" in _importance_text(settings)
    activation = RankPruner(model, tokenizer, config.replace(score="activation", budget="per_layer"))
    activation.measure_importance(samples, progress=False, verbose=False)
    assert "answer_weight" not in activation.plan().settings  # activation weighs no tokens
    assert "retrieval_mix" not in RankPruneConfig(score="joint").plan_settings()  # rank scores: not theirs


def test_a_mix_that_cannot_be_built_is_recorded_not_hidden(model, tokenizer):
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(5))
    config = RankPruneConfig(score="activation", num_samples=2, seq_len=24, batch_size=2, retrieval_mix=0.5)
    short = importance_scores(model, config, ids, progress=False, verbose=False, tokenizer=tokenizer)
    assert short.measured["retrieval_samples"] == 0 and "too short" in short.measured["retrieval_skipped"]
    untokenized = importance_scores(model, config, ids, progress=False, verbose=False)
    assert "no tokenizer" in untokenized.measured["retrieval_skipped"]
    assert "no retrieval documents" in _importance_text({"score": "activation", "score_measured": short.measured})


@pytest.mark.parametrize("values", [dict(retrieval_mix=2), dict(retrieval_mix=-0.1), dict(retrieval_mix="half"),
                                    dict(answer_weight=0), dict(answer_weight=float("nan")),
                                    dict(answer_weight=1e9)])  # fmt: skip
def test_out_of_range_mix_or_weight_is_a_config_error(values):
    with pytest.raises(ConfigError, match=next(iter(values))):
        RankPruneConfig(score="kl", **values)


def test_cli_refuses_a_mix_out_of_range_writing_nothing(tmp_path, capsys):
    folder = save_tiny_model("qwen3_5", tmp_path / "model")
    out = tmp_path / "pruned"
    code = main(["prune", str(folder), "--out", str(out), "--score", "kl", "--retrieval-mix", "2", "--quiet"])
    assert code == 2 and not out.exists()
    assert "retrieval_mix" in capsys.readouterr().err
    assert json.loads(json.dumps(RankPruneConfig(score="kl").plan_settings()))["retrieval_mix"] == 0.25


def test_greedy_kl_weighs_positions_too(model):
    from hf_rankprune.scoring import greedy_budget

    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(6))
    weights = torch.ones(2, 24)
    config = RankPruneConfig(score="kl", kl_greedy=True, num_samples=2, seq_len=24, batch_size=2, num_heads=2,
                             budget="per_layer", retrieval_mix=0.0)  # fmt: skip
    budget = greedy_budget(get_adapter(model), config)
    weighted = kl_scores(model, CalibrationSamples(ids, ["a", "b"], weights), config, budget=budget, progress=False)
    plain = kl_scores(model, ids, config, budget=budget, progress=False)
    assert weighted.measured["greedy_removal_order"] == plain.measured["greedy_removal_order"]
    weights[:, :12] = 0  # only the second half of each sample counts: a different objective
    half = kl_scores(model, CalibrationSamples(ids, ["a", "b"], weights), config, budget=budget, progress=False)
    assert not all(np.allclose(a, b) for a, b in zip(half.scores, plain.scores))
