# Two entry points: `make demo` and `make test`. Both create the virtualenv in .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-stop test lint unit venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
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

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
