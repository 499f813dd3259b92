# One-command set-up: `make test` and `make demo` install the system services the fleet and the
# console use (scripts/setup-system.sh: mosquitto, docker-registry, chromium), create .venv, install
# torch as the CPU build (torch==2.13.0, already on disk on our machines; never a multi-GB CUDA
# build), then slmops.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench lint clean

$(STAMP): pyproject.toml scripts/setup-system.sh
	bash scripts/setup-system.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,tracking]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not real"

demo: $(STAMP)
	$(BIN)/slmops demo

bench: $(STAMP)
	$(BIN)/python bench/batch_generate.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache
