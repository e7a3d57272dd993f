# Entry points: `make demo`, `make test` and `make bench` (see below). Each creates the
# virtualenv in .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-stop test lint unit venv clean bench

venv: $(VENV)/.installed

# setup.py builds ocspd/audit/_chain.c (gcc, libssl-dev); without them ocspd runs, slower.
$(VENV)/.installed: pyproject.toml setup.py ocspd/audit/_chain.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $@

# Sets up PostgreSQL (embedded under .demo/ unless OCSPD_DATABASE_URL is set), a demo PKI,
# and loads it into the status database.
demo: venv
	$(BIN)/python -m ocspd.demo

# Stops the embedded PostgreSQL that `make demo` left running (its data stays in .demo/pg).
demo-stop: venv
	$(BIN)/python -c "import pgserver; pgserver.get_server('.demo/pg', cleanup_mode='stop').cleanup()"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest -q

test: lint unit

# The performance story (bench/suite.py): every scenario against every peer, database sizes,
# revocation propagation, CRL signing and memory, into bench/RESULTS.md and bench/suite-*.png.
# About 40 minutes; `make bench QUICK=1` runs a short subset (about 2 minutes). Installs the
# bench extra (matplotlib, django-ca, gunicorn, py-spy); the script installs wrk, nginx and
# softhsm2 with apt-get when they are missing.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/suite.py $(if $(filter 1 yes true,$(QUICK)),--quick)

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,demo,bench]'
	touch $@

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
