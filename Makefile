# Two commands do all set-up on a fresh machine: `make train` (the main job) and `make test`.
# Each creates $(VENV) if it is missing and installs the project into it with the exact versions
# of a lock file: constraints-oldest.txt on Python 3.11 (jax 0.10.2, the oldest supported),
# constraints-newest.txt on Python >= 3.12 (the newest tested). Both are idempotent. The other
# end: make test PYTHON=python3.12 VENV=.venv-py312
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS ?= $(shell $(PYTHON) -c 'import sys; print("constraints-oldest.txt" if sys.version_info < (3, 12) else "constraints-newest.txt")' 2>/dev/null)
FASHION_MNIST := /usr/share/datasets/fashion-mnist
WORKDIR ?= runs/fashion_mnist
CONFIG ?= configs/default.py

.PHONY: venv data train evaluate smoke-train sweep smoke-sweep benchmark-sweep gradcheck \
        compare-flax device-check device-wheels tensorboard compare-sweeps test lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: cnnjax needs Python >= 3.11; '$(PYTHON)' is older or missing: pass PYTHON=/path/to/python3.12 (or newer)" >&2; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON) -m venv' is unavailable; install it with: apt-get install -y python3-venv" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" -c $(CONSTRAINTS)
	touch $(STAMP)

# Fashion-MNIST's IDX files from Debian's package (MNIST comes from ../shared/data/mnist or TFDS).
data:
	@test -d $(FASHION_MNIST) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "note: $(FASHION_MNIST) is missing: 'sudo apt-get install -y dataset-fashion-mnist'," \
	         "or set CNNJAX_DATA_DIR; TFDS downloads it where there is internet" >&2; \
	  fi; }

# Trains the reference CNN on Fashion-MNIST into $(WORKDIR); run again, it resumes (or, when the
# run is finished, says so and changes nothing): a run directory is never overwritten.
train: $(STAMP) data
	$(PY) -m experiments.train --config $(CONFIG) --workdir $(WORKDIR) \
	  $$(test -f $(WORKDIR)/config.json && echo --resume)

evaluate: $(STAMP)
	$(PY) -m experiments.evaluate --workdir $(WORKDIR)

# A brief real run (4,096 Fashion-MNIST training images, 2 epochs) into a fresh directory.
smoke-train: $(STAMP) data
	rm -rf runs/smoke
	$(PY) -m experiments.train --config configs/smoke.py --workdir runs/smoke
	$(PY) -m experiments.evaluate --workdir runs/smoke

# A learning-rate x seed sweep (8 members, one program) into runs/sweep_lr; again, it resumes.
SWEEP ?= configs/sweep_lr.py
SWEEPDIR ?= runs/sweep_lr
sweep: $(STAMP) data
	$(PY) -m experiments.sweep --config $(SWEEP) --workdir $(SWEEPDIR) \
	  $$(test -f $(SWEEPDIR)/sweep.json && echo --resume)

# A brief real sweep (4 members, 1 epoch on 4,096 images) into a fresh directory, then the same
# sweep in two shards and their merge.
smoke-sweep: $(STAMP) data
	rm -rf runs/sweep_smoke runs/sweep_smoke_shards
	$(PY) -m experiments.sweep --config configs/sweep_smoke.py --workdir runs/sweep_smoke
	$(PY) -m experiments.sweep --config configs/sweep_smoke.py --workdir runs/sweep_smoke_shards --shard 0/2
	$(PY) -m experiments.sweep --config configs/sweep_smoke.py --workdir runs/sweep_smoke_shards --shard 1/2
	$(PY) -m experiments.sweep --workdir runs/sweep_smoke_shards --merge

benchmark-sweep: $(STAMP)
	$(PY) -m experiments.benchmark_sweep --config $(SWEEP)

# The checks' groups in GRADCHECK_JOBS processes: compiling each check's programs, which is most
# of its time, keeps one core busy.
GRADCHECK_JOBS ?= 2
gradcheck: $(STAMP)
	$(PY) -m experiments.gradcheck --jobs=$(GRADCHECK_JOBS)

# TensorBoard over every run and sweep in runs/ (scalars as they train; a sweep's HParams), at
# http://localhost:6006; LOGDIR=runs/sweep_lr for one.
LOGDIR ?= runs
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir $(LOGDIR)

# Grid, random search, successive halving and PBT at one budget of member-epochs, 3 seeds each
# (configs/budget_*.py) into runs/budget: comparison.md and comparison.png; again, it resumes.
compare-sweeps: $(STAMP) data
	$(PY) -m experiments.compare_sweeps --workdir runs/budget

compare-flax: $(STAMP)
	$(PY) -m experiments.compare_flax

# The accelerator check (cnnjax/bench/device_check.py) into runs/device_check; on an offline image,
# first `make device-wheels` here and carry .device there (README: On a GPU or TPU).
device-check: $(STAMP)
	$(PY) -m experiments.device_check --out runs/device_check

device-wheels: $(STAMP)
	$(PY) -m experiments.device_wheels --out .device

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The suite in TEST_WORKERS processes (pytest-xdist): its compilations are single-threaded.
TEST_WORKERS ?= 2
test: lint data
	$(PY) -m pytest -n $(TEST_WORKERS)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .device
