"""Metric modules, loaded with `evaluate.load(<folder>)` (see hf_rankprune.evaluation.load_metric)."""
