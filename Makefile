# Everyday commands. `make run` and `make test` are the README's two commands.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# written by scripts/test-setup.sh: the TOKEND_TEST_POSTGRES_URL it detected
TEST_ENV := $(VENV)/test.env
# pip without its notices; PYTHONWARNINGS reaches the build backend (setuptools'
# deprecation banners); errors still show
PIP := PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS=ignore \
	$(BIN)/python -m pip install -qq

.PHONY: run test setup lint mypy audit jstest pytest install bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || { echo "make: creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing tokend and its dependencies into $(VENV)"
	@$(PIP) --upgrade pip
	@$(PIP) -e './clients/python[aiohttp,starlette,fastapi,django,flask]'
	@$(PIP) -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@echo "make: starting tokend dev (migrations, then API and workers; Ctrl-C stops it)"
	@$(BIN)/tokend dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check service workers clients/python examples tests

mypy: $(STAMP)
	$(BIN)/mypy

# Known vulnerabilities in the installed dependencies fail; an unreachable vulnerability
# database only warns (TOKEND_AUDIT_STRICT=1 makes it fail too).
audit: $(STAMP)
	$(BIN)/python .ci/audit.py

# PostgreSQL, Redis, docker-compose, the test database and the OpenID provider's npm
# packages: everything the suite needs besides the virtualenv (quick when all is there)
setup: $(STAMP)
	@scripts/test-setup.sh

# The JavaScript client's unit tests (node's own test runner; no packages to install)
jstest:
	cd clients/js && node --test test/

pytest: setup
	@set -a && . ./$(TEST_ENV) && set +a && $(BIN)/pytest

test: setup lint mypy audit jstest pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
