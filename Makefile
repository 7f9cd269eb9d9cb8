# Two commands for a newcomer: `make demo` runs the product, `make test` runs the tests.
# Both create the virtualenv and install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The C extension (setup.py, src/sluice/por/_merkle*) is part of the install: a change rebuilds.
NATIVE_SOURCES := setup.py $(wildcard src/sluice/por/_merkle.c src/sluice/por/_merkle_*.h)
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml $(NATIVE_SOURCES) | cksum | cut -d' ' -f1)
UV_VERSION := 0.13.8
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench
BENCH_UPDATES ?= 100000

.PHONY: demo dashboard test tools lint format bench bench-quick soak lock clean install verify

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml $(NATIVE_SOURCES)
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	@# OpenSSL's headers for the proof-of-liabilities tree's C extension (sluice.por._merkle).
	@test -f /usr/include/openssl/sha.h || { echo "installing libssl-dev"; $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev >/dev/null; }
	@$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@# Everything compiled to bytecode once: where PYTHONDONTWRITEBYTECODE is set (these machines
	@# set it) Python never writes a .pyc, so every process would compile each module it imports
	@# on each start (a `sluice` command 1.7 s instead of 0.7; the tests start hundreds of them).
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib src tests >/dev/null
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sluice demo

# The pages (/login, /dashboard, /me) and the API on the data `make demo` left, with ingestion and
# the workers; sign in with a key the demo printed (also in data/demo/dashboard-keys.txt).
dashboard: $(STAMP)
	$(BIN)/sluice serve --db sqlite:///data/demo/sluice.db --ledger data/demo/ledger.db --port 8080

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

# The suite runs on TEST_WORKERS processes (pytest-xdist; four, because many tests wait on real
# nodes, servers and subprocesses rather than compute); TEST_WORKERS=0 runs it in this one.
TEST_WORKERS ?= 4
# Bytecode is written during the run even where PYTHONDONTWRITEBYTECODE is set: pytest's
# rewritten test modules and the product's modules changed since the install are then compiled
# once, not again in every worker and every `sluice` process the tests start.
test: lint tools
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -n $(TEST_WORKERS)

# Programs the tests drive besides Python: wrk (the API benchmark's load generator), litecoind
# (Debian's Litecoin Core, the real node of the Bitcoin custody tests, run in -regtest),
# chromium (Debian's, the browser the web pages' tests drive through Playwright; Playwright
# downloads nothing) and spin (the model checker of verification/).
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)
tools:
	@command -v wrk >/dev/null || { echo "installing wrk"; $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	@command -v litecoind >/dev/null || { echo "installing litecoind"; $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq litecoind >/dev/null; }
	@command -v chromium >/dev/null || { echo "installing chromium"; $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v spin >/dev/null || { echo "installing spin"; $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq spin >/dev/null; }

# The model checks (docs/verification.md): spin on the Promela models under verification/ and
# their mutants, the tests tying the models to the code, and the CrossHair checks. `make test`
# runs them too (they are tests under tests/verification).
verify: $(STAMP) tools
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -n $(TEST_WORKERS) tests/verification

bench: $(STAMP)
	$(BIN)/sluice bench ingest --updates $(BENCH_UPDATES) --db sqlite:///data/bench/bench.db --record docs/benchmarks.md
	$(BIN)/sluice bench ingest --updates $(BENCH_UPDATES) --db $(PG_URL) --record docs/benchmarks.md
	$(BIN)/sluice bench withdrawals --record docs/benchmarks.md
	$(BIN)/sluice bench wire --record docs/benchmarks.md
	$(BIN)/sluice bench screening --record docs/benchmarks.md
	$(BIN)/sluice bench api --record docs/benchmarks.md
	$(BIN)/sluice bench compliance --record docs/benchmarks.md
	$(BIN)/sluice bench bitcoin --record docs/benchmarks.md
	$(BIN)/sluice bench por --record docs/benchmarks.md
	$(BIN)/sluice bench events --events 100000 --record docs/benchmarks.md
	$(BIN)/sluice bench events --events 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_events --record docs/benchmarks.md

bench-quick: $(STAMP)
	$(BIN)/sluice bench ingest --updates 5000 --db sqlite:///data/bench/bench.db

# The deterministic simulation over many seeds (make test runs a short sweep); prints the line of
# every seed with a violation and a summary. SOAK_SEEDS=1-2000 SOAK_JOBS=1 for a longer one.
# SOAK_LATE is the share of faults that are late commits (a command committed after its deadline);
# SOAK_LATE=0 draws the faults as before late commits existed.
SOAK_SEEDS ?= 1-500
SOAK_STEPS ?= 400
SOAK_JOBS ?= 2
SOAK_LATE ?= 0.3
soak: $(STAMP)
	$(BIN)/python -m sluice.sim --seeds $(SOAK_SEEDS) --steps $(SOAK_STEPS) --jobs $(SOAK_JOBS) --late-commit-rate $(SOAK_LATE)

# Re-pin every dependency after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes -q -o requirements.lock

clean:
	rm -rf $(VENV) data bench/out .pytest_cache .mypy_cache .ruff_cache
