# Two commands a fresh machine needs: `make demo` and `make test`. Everything else is set-up they depend on.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# The stamp is keyed on pyproject's content (and the torch spec), so set-up reruns only when dependencies change.
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | sha256sum | cut -c1-16)-$(shell echo '$(TORCH_SPEC)' | sha256sum | cut -c1-8)
PYTEST_ARGS ?=
QUICK ?=

.PHONY: setup demo test test-fast bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, by exact spec, so pip takes the CPU wheel on disk instead of resolving a CUDA build.
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.stamp-*
	touch $@

demo: setup
	$(BIN)/albert demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier: no Ray runtime, no servers, no console-script process (tests/conftest.py marks and guards it).
test-fast: setup
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

# Every benchmark in its own process, then benchmarks/results/summary.{json,md} and the README's figures.
bench: setup
	$(BIN)/python -m benchmarks.suite $(if $(QUICK),--quick,)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .albert .pytest_cache
