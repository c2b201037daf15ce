# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: install demo test lint lock clean

install: $(STAMP)

# Installs the pinned versions of constraints.txt (known good), within the ranges of pyproject.toml.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip -c $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/sparsetrain run configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check sparsetrain triton_kernels launch benchmarks tests

# Refresh constraints.txt on purpose: resolve the newest versions pyproject.toml allows in a scratch venv.
# Run `make test` afterwards (it reinstalls from the new pins) and commit constraints.txt only if it passes.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e ".[test]"
	head -n 3 $(CONSTRAINTS) > $(CONSTRAINTS).new
	.venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^-e' >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-lock

clean:
	rm -rf runs .pytest_cache
