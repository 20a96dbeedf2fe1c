# Everything a newcomer needs: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,postgres,psycopg,mysql,asyncmy,agents,openai

.PHONY: install demo test test-cluster lint types docs pytest bench bench-smoke soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/lattice demo

lint: install
	$(BIN)/ruff check $(wildcard src tests benchmarks migrations cluster)

types: install
	$(BIN)/mypy

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

# The whole suite on the default drivers (asyncpg, aiomysql), then every
# server test again on the other two drivers Lattice supports.
# (LATTICE_TEST_DRIVERS=other: psycopg for asyncpg, asyncmy for aiomysql; tests/conftest.py)
OTHER_DRIVERS = LATTICE_TEST_DRIVERS=other

# tests/cluster/ starts private database clusters and runs in `make test-cluster`.
pytest: install
	$(BIN)/pytest --ignore=tests/cluster $(PYTEST_ARGS)
	$(OTHER_DRIVERS) $(BIN)/pytest --ignore=tests/cluster -m "postgres or mysql" $(PYTEST_ARGS)

test: lint types docs pytest

# Private PostgreSQL (primary, standby, PgBouncer) and MariaDB Galera clusters
# on loopback, started and stopped by the scripts in cluster/.
test-cluster: install
	$(BIN)/pytest tests/cluster $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# The load, cancellation, fault and property suites at their larger settings.
SOAK = LATTICE_SOAK=1 LATTICE_CANCEL_OPS=3000 LATTICE_HYPOTHESIS_EXAMPLES=150 LATTICE_RESTART_ROUNDS=12
soak: install
	$(SOAK) $(BIN)/pytest tests/test_load.py tests/test_cancellation.py tests/test_faults.py tests/test_properties.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
