# Two commands do all set-up on a fresh machine: `make gradcheck` (the main job) and `make test`.
# Each creates .venv if it is missing and installs the project into it; both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv gradcheck compare-flax test lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON) -m venv' is unavailable; install it with: apt-get install -y python3-venv" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

gradcheck: $(STAMP)
	$(PY) -m experiments.gradcheck

compare-flax: $(STAMP)
	$(PY) -m experiments.compare_flax

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
