# gazeloop: `make setup`, `make demo`, `make test`. Both demo and test run setup first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Shared models and data live beside the checkout; they are read in place, never copied.
SHARED ?= $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/models),)
export GAZELOOP_MODELS ?= $(SHARED)/models
endif

.PHONY: setup models demo test test-fast wheel-check lint clean

setup: $(STAMP) models

# torch comes first and pinned: this machine has a CPU build of 2.13.0 on disk, while a plain
# `torch` requirement may pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,trainer,mqtt

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/gazeloop models build

demo: setup
	$(BIN)/gazeloop demo --out demo-out

test: setup
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; rc=0; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Build the wheel, install it non-editable into a fresh venv, check it (CI runs this too).
wheel-check:
	PYTHON=$(PYTHON) bash .ci/wheel-check

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache .ruff_cache
