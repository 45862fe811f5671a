# Two entry points that work on a fresh machine: `make test` and `make demo`.
VENV ?= .venv
PY := $(VENV)/bin/python
# On machines without CUDA, pin the CPU build of torch in the same pip command (an unpinned torch pulls a CUDA build).
TORCH_PIN := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q tests

demo: install
	$(PY) scripts/run_demo.py --out demo_out --overwrite

clean:
	rm -rf $(VENV) demo_out
