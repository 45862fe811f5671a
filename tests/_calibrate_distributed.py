"""Launched by tests/test_calibrate.py under `torchrun --nproc_per_node 2`: each process calibrates its shard."""

import sys

import torch
from accelerate import PartialState
from conftest import build_tiny_model

from hf_rankprune.calibrate import calibrate
from hf_rankprune.config import RankPruneConfig

if __name__ == "__main__":
    state = PartialState(cpu=True)
    assert torch.distributed.is_initialized() and state.num_processes == 2, "expected a 2-process gloo group"
    model = build_tiny_model(sys.argv[1])
    samples = torch.load(sys.argv[2])
    config = RankPruneConfig(seq_len=samples["input_ids"].shape[1])
    stats = calibrate(model, samples["input_ids"], config, progress=False, categories=samples["categories"])
    stats.to_json_file(f"{sys.argv[3]}.rank{state.process_index}.json")
    state.wait_for_everyone()
