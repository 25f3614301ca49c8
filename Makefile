# gazeloop: `make setup`, `make demo`, `make test`. Both demo and test run setup first.
# The first supported Python (3.11-3.14): `python3` when it is one, else the newest of
# python3.13, 3.12, 3.11, 3.14 on PATH (macOS's own python3 is 3.9; Homebrew's is current).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python3.14; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 14))' \
	>/dev/null 2>&1 && { echo $$p; exit; }; done; echo none)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Shared models and data live beside the checkout; they are read in place, never copied into
# the repository. `gazeloop models build` keeps a checked copy of the models in the user cache,
# so a plain shell finds them after `make setup` without GAZELOOP_MODELS.
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
	@test "$(PYTHON)" != none || { echo "make setup: no Python 3.11-3.14 found (python3 is \
	$$(python3 --version 2>&1)); install one, e.g. 'brew install python@3.13', or pass \
	PYTHON=/path/to/python3.13"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/gazeloop models build

demo: setup
	$(BIN)/gazeloop demo --out demo-out

# The tests run on every core (pytest-xdist, at most 4 workers; each worker has its own model
# cache and temporary folders; brokers take free loopback ports). The window tests then run on
# their own, one at a time: on Xvfb, with no window manager, a Qt window created while every
# core is busy sometimes never paints (seen 2026-12-05 on this 2-core machine beside two busy
# loops: black for 30 s and more in 9 of 16 runs of those tests on two workers, also with
# QT_XCB_NO_MITSHM=1, and in 1 of 7 runs one at a time). TEST_JOBS=0 runs each part in one
# process.
TEST_JOBS ?= auto
PYTEST_RC = rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; rc=0; fi

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --maxprocesses 4 --dist worksteal \
		-m "not needs_display"; $(PYTEST_RC); first=$$rc; \
	$(BIN)/python -m pytest -q -m needs_display; $(PYTEST_RC); \
	[ $$first -eq 0 ] && exit $$rc || exit $$first

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Build the wheel, install it non-editable into a fresh venv, check it (CI runs this too).
wheel-check:
	PYTHON=$(PYTHON) bash .ci/wheel-check

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache .ruff_cache
