# Two commands: `make demo` and `make test`. Both need only Python 3.11+ and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test faults lint install readme clean

$(BIN)/caudal: pyproject.toml tests/plugins/example/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# The example policy plugin, installed as a user would install theirs.
	$(BIN)/pip install --quiet --no-deps -e tests/plugins/example
	@touch $@

install: $(BIN)/caudal

demo: $(BIN)/caudal
	$(BIN)/caudal demo $(ARGS)

lint: $(BIN)/caudal
	$(BIN)/ruff check streams policies tests
	$(BIN)/ruff format --check streams policies tests
	$(BIN)/mypy policies
	$(BIN)/mypy streams

# README's configuration and metrics tables, generated from the code (tests fail when they drift).
readme: $(BIN)/caudal
	$(BIN)/python -m streams.devtools.readme README.md

test: lint
	$(BIN)/pytest -q -m "not faults" $(ARGS)

# The fault suite: workers joining, leaving, killed -9 and restarted under traffic (~15 min).
faults: $(BIN)/caudal
	$(BIN)/pytest -q -s -m faults tests/faults $(ARGS)

clean:
	rm -rf $(VENV) caudal-state caudal-output demo-output .pytest_cache .mypy_cache .ruff_cache
