# Lattice: every command a newcomer needs. `make test` and `make demo` work from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install stack stack-down clean check test test-faults bench demo demo-stop fmt

install: $(STAMP)

# constraints.txt pins every version, so a fresh clone installs what was tested.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.11 or run make PYTHON=python3.x"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt pip
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

stack: install
	$(BIN)/lattice stack up

# The demo's receiver and projectors go first: they need the stack.
stack-down: demo-stop
	@if [ -x $(BIN)/lattice ]; then $(BIN)/lattice stack down; else echo "nothing to stop (no .venv)"; fi

# Never delete the data of servers still running (stack-down cannot stop them without .venv).
clean: stack-down
	@for f in .lattice/kafka/broker.pid .lattice/pg/data/postmaster.pid; do \
	  pid=$$(head -n 1 $$f 2>/dev/null) || continue; \
	  if tr '\0' ' ' < /proc/$$pid/cmdline 2>/dev/null | grep -q "$$(pwd -P)/.lattice"; then \
	    echo "make: $$f names a server still running (pid $$pid): run make stack-down first"; exit 1; \
	  fi; \
	done
	rm -rf .lattice

check: install
	$(BIN)/ruff check ingest projectors schemas deploy tests
	$(BIN)/ruff format --check ingest projectors schemas deploy tests
	$(BIN)/mypy ingest projectors schemas deploy tests

fmt: install
	$(BIN)/ruff format ingest projectors schemas deploy tests
	$(BIN)/ruff check --fix ingest projectors schemas deploy tests

# The suite runs in TEST_WORKERS pytest-xdist processes (TEST_WORKERS=0: in this one); the
# fault scenarios stay in one worker, one after another (tests/support/serial_groups.py).
TEST_WORKERS ?= 3
test: install
	deploy/with-stack.sh $(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Only the fault suite: brokers, databases, receivers and projectors killed under load
# (LATTICE_FAULT_SEED replays a run; LATTICE_FAULT_KILLS=500 for a nightly run).
test-faults: install
	deploy/with-stack.sh $(BIN)/pytest tests/faults $(PYTEST_ARGS)

bench: install
	deploy/with-stack.sh $(BIN)/python -m tests.benchmarks $(BENCH_ARGS)

# The front door: stack, migrations, receiver and projectors in the background, a simulated
# billing month delivered like Stripe, then the tables' report (DEMO_CUSTOMERS, DEMO_SEED...).
demo: install
	deploy/demo.sh

demo-stop:
	deploy/demo.sh stop
