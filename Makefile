# Everyday commands. `make run` and `make test` are the README's two commands.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint mypy audit pytest install bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tokend dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check service workers tokend_client tests

mypy: $(STAMP)
	$(BIN)/mypy

# Known vulnerabilities in the installed dependencies fail; an unreachable vulnerability
# database only warns (TOKEND_AUDIT_STRICT=1 makes it fail too).
audit: $(STAMP)
	$(BIN)/python .ci/audit.py

pytest: $(STAMP)
	$(BIN)/pytest

test: lint mypy audit pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
