# bioseq — the two Quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default; on a GPU machine: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" ...
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# Two installs, each recorded by a stamp: the base (what `bioseq` needs to run, e.g. the demo) and the
# development extras on top (pytest, ruff and Triton, whose interpreter runs the kernel tests on CPU).
BASE_STAMP := $(VENV)/.bioseq-base
DEV_STAMP := $(VENV)/.bioseq-dev

.PHONY: setup setup-dev demo test test-slow lint bench clean

$(BASE_STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	touch $(BASE_STAMP)

$(DEV_STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

setup: $(BASE_STAMP)

setup-dev: $(DEV_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/bioseq demo

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache lightning_logs
