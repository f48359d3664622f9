# Heimdall Export: the few commands a person or CI needs. Every target that runs code creates the
# virtual environment first, so `make demo` and `make test` work on a fresh clone.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Rebuilt when pyproject.toml changes; otherwise `make venv` is instant.
STAMP  := $(VENV)/.installed
# Pinned explicitly and installed first: pip here is capped by a constraint file and finds the CPU
# wheel on local disk; an unpinned torch would pull several GB of CUDA libraries.
TORCH  := torch==2.13.0
DEMO_OUT ?= heimdall-demo

.PHONY: help venv test lint demo clean distclean

help:
	@echo "make demo       run the main job (creates .venv on first use)"
	@echo "make test       run the test suite (creates .venv on first use)"
	@echo "make lint       ruff check + mypy"
	@echo "make venv       create/update .venv"
	@echo "make clean      remove caches and demo output; make distclean also removes .venv"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x "$(BIN)/python" ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[convert,onnx,dev]'
	@touch $@

# Exit code 5 means "no tests collected": not a failure of the suite itself.
test: venv
	@rc=0; $(BIN)/pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: venv
	$(BIN)/heimdall demo --out $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/out *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
