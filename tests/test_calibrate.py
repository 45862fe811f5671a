import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import dispatch_model, infer_auto_device_map
from conftest import build_tiny_model

from hf_rankprune.arch import AdapterError, get_adapter, model_geometry, supported_model_types
from hf_rankprune.calibrate import CalibrationError, NonFiniteStateError, calibrate, observe_states
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.stats import METRICS, RankStats, StatsError, state_metrics

HERE = Path(__file__).parent


class Samples:
    """Minimal stand-in with the CalibrationSamples fields calibrate() reads."""

    def __init__(self, input_ids, categories):
        self.input_ids, self.categories = input_ids, categories


def random_samples(n=4, length=150, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (n, length), generator=generator)
    return Samples(ids, ["alpha" if i % 2 else "beta" for i in range(n)])


def test_observed_states_are_the_models_true_states(family):
    model = build_tiny_model(family)
    ids = random_samples(2, 200).input_ids
    with torch.no_grad():
        reference = model(ids, use_cache=True)
        captured = {}
        with observe_states(model, [64, 128, 192, 200], lambda layer, g, s: captured.__setitem__((layer, g), s.clone())):
            observed = model(ids, use_cache=False)
    # observing does not change what the model computes
    assert torch.allclose(observed.logits, reference.logits, atol=1e-5, rtol=0)
    layers = [layer.index for layer in get_adapter(model).linear_layers()]
    assert sorted({layer for layer, _ in captured}) == layers
    for layer in layers:
        final = reference.past_key_values.get_recurrent_state(layer)
        assert (captured[(layer, 3)] - final).abs().max().item() <= 1e-5
        # intermediate states differ from the final one (they really are earlier states)
        assert (captured[(layer, 0)] - final).abs().max().item() > 1e-2 * final.abs().max().item()


def test_intermediate_state_matches_a_prefix_run():
    model = build_tiny_model("qwen3_next")
    ids = random_samples(1, 150).input_ids
    with torch.no_grad():
        prefix = model(ids[:, :64], use_cache=True).past_key_values
        captured = {}
        with observe_states(model, [64, 150], lambda layer, g, s: captured.__setitem__((layer, g), s.clone())):
            model(ids, use_cache=False)
    for layer in (0, 1, 3):
        assert (captured[(layer, 0)] - prefix.get_recurrent_state(layer)).abs().max().item() <= 1e-5


def test_state_metrics_on_known_matrices():
    d = 8
    u, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    sigma = torch.tensor([4.0, 2.0, 1.0, 1e-3, 1e-5, 0, 0, 0], dtype=torch.float64)
    state = (u * sigma) @ u.T
    metrics = state_metrics(torch.stack([state, torch.zeros(d, d, dtype=torch.float64)]), rank_eps=1e-4)
    assert metrics["threshold_rank"].tolist() == [4.0, 0.0]  # 1e-3 > 4e-4 counts, 1e-5 does not
    assert metrics["nuclear_norm"][0].item() == pytest.approx(sigma.sum().item(), rel=1e-9)
    assert metrics["frobenius_norm"][0].item() == pytest.approx(sigma.norm().item(), rel=1e-9)
    assert metrics["stable_rank"][0].item() == pytest.approx((sigma**2).sum().item() / 16, rel=1e-9)
    p = sigma[sigma > 0] / sigma.sum()
    assert metrics["entropy_rank"][0].item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-6)
    assert all(metrics[m][1].item() == 0 for m in METRICS)
    # rectangular states use the smaller Gram matrix and agree with an SVD
    rect = torch.randn(3, 5, 9)
    expected = (torch.linalg.svdvals(rect.double()) > 1e-4 * torch.linalg.svdvals(rect.double())[:, :1]).sum(-1)
    assert state_metrics(rect, 1e-4)["threshold_rank"].tolist() == expected.double().tolist()


def test_calibrate_records_grid_categories_and_rank_bounds(family):
    model = build_tiny_model(family)
    samples = random_samples(4, 150)
    stats = calibrate(model, samples, RankPruneConfig(seq_len=150, batch_size=3), progress=False)
    assert stats.grid == [64, 128, 150]
    linear = [layer.index for layer in get_adapter(model).linear_layers()]  # 0, 1, 3 (and 2: Mamba2, Zamba2)
    assert stats.layers == linear and stats.num_heads == [8] * len(linear) and stats.rank_caps == [16] * len(linear)
    assert stats.category_names == ["alpha", "beta"] and stats.num_samples == 4
    assert stats.categories["alpha"].counts.tolist() == [2, 2, 2]
    for trajectory in stats.trajectory("threshold_rank"):
        assert trajectory.shape == (8, 3)
        # Thm 3.1: rank(S_t) <= min(t, d)
        assert (trajectory <= np.minimum(np.asarray(stats.grid), 16)).all()
    # the heads really differ (spread decay rates): the tiny models are stratified
    means = np.concatenate(stats.head_means("threshold_rank"))
    assert means.max() - means.min() > 5


def test_batched_and_unbatched_calibration_agree():
    model = build_tiny_model("qwen3_5")
    samples = random_samples(4, 130)
    one = calibrate(model, samples, RankPruneConfig(seq_len=130, batch_size=1), progress=False)
    four = calibrate(model, samples, RankPruneConfig(seq_len=130, batch_size=4), progress=False)
    for metric in METRICS:
        for a, b in zip(one.trajectory(metric), four.trajectory(metric)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_merge_and_json_round_trip_are_exact(tmp_path):
    model = build_tiny_model("qwen3_next")
    samples = random_samples(4, 130)
    config = RankPruneConfig(seq_len=130)
    whole = calibrate(model, samples, config, progress=False)
    first = calibrate(model, Samples(samples.input_ids[:2], samples.categories[:2]), config, progress=False)
    second = calibrate(model, Samples(samples.input_ids[2:], samples.categories[2:]), config, progress=False)
    merged = first.merge(second)
    assert merged.num_samples == 4
    for metric in METRICS:
        for a, b in zip(whole.trajectory(metric), merged.trajectory(metric)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    path = tmp_path / "stats.json"
    merged.to_json_file(path)
    loaded = RankStats.from_json_file(path)
    assert loaded.to_dict() == merged.to_dict()
    other_grid = calibrate(model, samples, config.replace(grid_step=32), progress=False)
    with pytest.raises(StatsError, match="different grid"):
        whole.merge(other_grid)


def test_calibration_through_accelerate_dispatch_with_cpu_and_disk_offload(tmp_path):
    model = build_tiny_model("qwen3_5")
    samples = random_samples(2, 130)
    config = RankPruneConfig(seq_len=130)
    reference = calibrate(model, samples, config, progress=False)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "cpu", "model.layers.3": "disk",
                  "model.norm": "cpu", "lm_head": "cpu"}  # fmt: skip
    dispatched = dispatch_model(build_tiny_model("qwen3_5"), device_map=device_map, offload_dir=str(tmp_path))
    assert dispatched.model.layers[1].linear_attn.in_proj_qkv.weight.device.type == "meta"
    offloaded = calibrate(dispatched, samples, config, progress=False)
    for a, b in zip(reference.trajectory("nuclear_norm"), offloaded.trajectory("nuclear_norm")):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert infer_auto_device_map(model)  # accelerate can plan this model class too


@pytest.mark.slow
def test_two_process_calibration_equals_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun must be installed with torch"
    samples = random_samples(5, 130, seed=3)
    data = tmp_path / "samples.pt"
    torch.save({"input_ids": samples.input_ids, "categories": samples.categories}, data)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(HERE / "_calibrate_distributed.py"),
         "qwen3_next", str(data), str(tmp_path / "stats")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = RankStats.from_json_file(tmp_path / "stats.rank0.json")
    rank1 = RankStats.from_json_file(tmp_path / "stats.rank1.json")
    single = calibrate(build_tiny_model("qwen3_next"), samples, RankPruneConfig(seq_len=130), progress=False)
    assert rank0.num_samples == rank1.num_samples == single.num_samples == 5
    assert json.dumps(rank0.to_dict()) == json.dumps(rank1.to_dict())
    # ranks are integers and merge exactly; norms agree to float32 forward round-off (thread counts differ)
    for a, b in zip(single.trajectory("threshold_rank"), rank0.trajectory("threshold_rank")):
        np.testing.assert_array_equal(a, b)
    for metric in METRICS:
        for a, b in zip(single.trajectory(metric), rank0.trajectory(metric)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    for name in single.category_names:
        assert rank0.categories[name].counts.tolist() == single.categories[name].counts.tolist()


def test_bad_inputs_fail_clearly():
    model = build_tiny_model("qwen3_5")
    with pytest.raises(CalibrationError, match="No calibration samples"):
        calibrate(model, torch.zeros(0, 100, dtype=torch.long), progress=False)
    with pytest.raises(CalibrationError, match="shorter than the first grid point"):
        calibrate(model, torch.zeros(1, 40, dtype=torch.long), RankPruneConfig(seq_len=40), progress=False)
    with torch.no_grad():
        model.model.layers[1].linear_attn.A_log[5] = float("nan")
    with pytest.raises(NonFiniteStateError, match="layer 1, head 5"):
        calibrate(model, torch.zeros(1, 100, dtype=torch.long), RankPruneConfig(seq_len=100), progress=False)


def test_unsupported_and_non_linear_models_are_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64))  # fmt: skip
    with pytest.raises(AdapterError, match="Unsupported architecture model_type='llama'") as info:
        get_adapter(llama)
    assert "qwen3_next" in str(info.value) and "qwen3_5" in str(info.value)
    assert {"qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"} <= set(supported_model_types())
    full_only = build_tiny_model("qwen3_next", layer_types=["full_attention"] * 4)
    with pytest.raises(AdapterError, match="no linear-attention layers"):
        get_adapter(full_only)


def test_calibrating_a_ragged_pruned_model_observes_its_true_states(family):
    from hf_rankprune.plan import PrunePlan
    from hf_rankprune.surgery import apply_plan

    model = build_tiny_model(family)
    apply_plan(model, PrunePlan.from_removed_heads(model_geometry(model), {0: [1, 2, 3], 3: [0, 5]}))
    ids = random_samples(1, 130).input_ids
    with torch.no_grad():
        reference = model(ids, use_cache=True)
        captured = {}
        with observe_states(model, [64, 130], lambda layer, g, s: captured.__setitem__((layer, g), s.clone())):
            observed = model(ids, use_cache=False)
    assert torch.allclose(observed.logits, reference.logits, atol=1e-5, rtol=0)
    assert captured[(0, 1)].shape[1] == 5 and captured[(1, 1)].shape[1] == 8 and captured[(3, 1)].shape[1] == 6
    for layer in (0, 1, 3):
        assert (captured[(layer, 1)] - reference.past_key_values.get_recurrent_state(layer)).abs().max() <= 1e-5
    stats = calibrate(model, ids, RankPruneConfig(seq_len=130), progress=False)
    assert stats.num_heads == [{0: 5, 1: 8, 2: 8, 3: 6}[layer] for layer in stats.layers]


def test_composite_qwen3_5_vision_language_config_resolves_to_its_text_model():
    from conftest import COMMON
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=8,
                  temporal_patch_size=1, spatial_merge_size=1)  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=dict(COMMON, intermediate_size=128),
                                                          vision_config=vision)).eval()  # fmt: skip
    assert model.config.model_type == "qwen3_5"
    stats = calibrate(model, random_samples(1, 100), RankPruneConfig(seq_len=100), progress=False)
    assert stats.layers == [0, 1, 3] and stats.settings["model_type"] == "qwen3_5_text"
