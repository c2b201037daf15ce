# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: install data demo test lint lock clean

install: $(STAMP)

# Installs the pinned versions of constraints.txt (known good), within the ranges of pyproject.toml.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip -c $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

# Real Fashion-MNIST (60,000 / 10,000 IDX files, the Method 1 development set) from Debian's dataset-fashion-mnist
# into $(FASHION_MNIST); needs root (`sudo make data`). Then: `data.source=idx data.path=$(FASHION_MNIST)`.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
data:
	@test -f $(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz || apt-get install -y dataset-fashion-mnist \
		|| (apt-get update && apt-get install -y dataset-fashion-mnist)
	@ls $(FASHION_MNIST)

demo: install
	$(BIN)/sparsetrain run configs/quickstart.yaml

# Two workers (pytest-xdist), one test file per worker at a time: module fixtures (a Slurm reference run) are
# built once, and the Slurm and multi-rank files, which mostly wait on subprocesses, overlap. A third worker does not
# help on two cores: quiet clean-clone CIs of the same 1,468 tests gave 845 s of pytest with two, 843 s with three (the Slurm requeue chain
# takes 175 s instead of 115 s when its jobs share the cores, and it is the longest path).
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

lint: install
	$(BIN)/ruff check sparsetrain triton_kernels launch benchmarks tests examples

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
