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

.PHONY: help venv test lint lint-template fuzz-api demo clean distclean

help:
	@echo "make demo       run the main job (creates .venv on first use)"
	@echo "make test       run the test suite (creates .venv on first use)"
	@echo "make lint       ruff check + mypy (strict: code, functions, bench, tests)"
	@echo "make lint-template  cfn-lint + sam validate --lint on template.yaml (SAM CLI in .venv-sam)"
	@echo "make fuzz-api   schemathesis against the local stack's HTTP API (the served OpenAPI document)"
	@echo "make venv       create/update .venv"
	@echo "make clean      remove caches and demo output; make distclean also removes .venv"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x "$(BIN)/python" ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[convert,onnx,dev]'
	@touch $@

# A run that collects no test fails (pytest's exit code 5): a green suite must have run something.
test: venv
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# The SAM CLI (and the cfn-lint it brings) in a virtual environment of its own: its pins (boto3,
# pydantic, ...) must not fight the project's. Pinned, so CI checks with the same rules every time; the
# stamp names the versions, so bumping a pin reinstalls. Creating it takes about a minute (a current
# pip installs it faster than the venv's bundled one). `sam validate --lint` only runs cfn-lint on the
# SAM-translated template: no credentials and no network, only a region.
SAM_VENV          := .venv-sam
SAM_CLI_VERSION   := 1.170.0
CFN_LINT_VERSION  := 1.58.0
SAM_STAMP         := $(SAM_VENV)/.installed-$(SAM_CLI_VERSION)-$(CFN_LINT_VERSION)

$(SAM_STAMP):
	@if [ ! -x "$(SAM_VENV)/bin/python" ]; then echo "creating $(SAM_VENV) with $(PYTHON)"; $(PYTHON) -m venv $(SAM_VENV); fi
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet 'aws-sam-cli==$(SAM_CLI_VERSION)' 'cfn-lint==$(CFN_LINT_VERSION)'
	@rm -f $(SAM_VENV)/.installed-*
	@touch $@

lint-template: $(SAM_STAMP)
	@$(SAM_VENV)/bin/sam --version
	@$(SAM_VENV)/bin/cfn-lint --version
	$(SAM_VENV)/bin/cfn-lint template.yaml
	AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam validate --lint --template-file template.yaml

# Schemathesis on the real local HTTP API: no 5xx, every status/content type/header/body as documented.
fuzz-api: venv
	$(BIN)/python tests/e2e/fuzz_api.py

demo: venv
	$(BIN)/heimdall demo --out $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/out *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
