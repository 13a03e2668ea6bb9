# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint clean

# Re-install whenever pyproject.toml changes; pip takes torch and torchvision from the
# pinned versions in pyproject.toml. The server's extras (server, worker) and the test
# tools (dev); `pip install .` alone is the client and the CLI. No pip cache: the wheels
# come from local disk, and a cached copy of torch would cost gigabytes more.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --no-cache-dir -e '.[server,worker,dev]'
	touch $@

install: $(VENV)/.installed

# The service on its embedded defaults: SQLite and a file-system broker under
# $${GRAFT_DATA_DIR:-./var}, the API on 127.0.0.1:$(PORT) and one worker process.
run: install
	$(BIN)/graft serve --host 127.0.0.1 --port $(PORT)

test: install
	$(BIN)/python -m pytest

# Everything but the tests marked e2e (real worker, torchrun and browser processes).
test-fast: install
	$(BIN)/python -m pytest -m "not e2e"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
