# Two commands: `make demo` and `make test`. Both need only Python 3.11+ and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test faults bench soak lint install readme clean

$(BIN)/caudal: pyproject.toml setup.py policies/_wire.c streams/pipeline/_dropped.c tests/plugins/example/pyproject.toml
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
	$(BIN)/pytest -q -m "not faults" --durations=15 $(ARGS)

# The fault suite: workers joining, leaving, killed -9 and restarted under traffic (~21 min).
faults: $(BIN)/caudal
	$(BIN)/pytest -q -s -m faults tests/faults $(ARGS)

# The standard benchmark set (one JSON object per line in bench-results.jsonl; ~12 min):
# three bursts, the policy engine, a long burst (300,000 traces: the sustained maximum), a
# steady rate of 80 % of that maximum (or BENCH_RATE traces/s), two workers, and 200,000
# traces buffered at once.
BENCH_RATE ?=
bench: $(BIN)/caudal
	rm -f bench-results.jsonl
	for run in 1 2 3; do $(BIN)/caudal bench --json >> bench-results.jsonl; done
	$(BIN)/caudal bench --policies-only --json >> bench-results.jsonl
	$(BIN)/caudal bench --traces 300000 --json >> bench-results.jsonl
	rate="$(BENCH_RATE)"; [ -n "$$rate" ] || rate=$$(tail -n 1 bench-results.jsonl | \
	  $(BIN)/python -c 'import json, sys; r = json.load(sys.stdin); print(round(0.8 * r["spans_per_second"] / r["spans_per_trace"]))'); \
	$(BIN)/caudal bench --rate $$rate --traces 300000 --json >> bench-results.jsonl
	$(BIN)/caudal bench --workers 2 --traces 100000 --json >> bench-results.jsonl
	$(BIN)/caudal bench --traces 200000 --wait 60s --json >> bench-results.jsonl
	cat bench-results.jsonl

# Memory over time (~31 min): one worker under steady traffic, SOAK_RATE traces/s (half of what
# one worker sustains here) of SOAK_SPANS spans (the local broker keeps every record in memory:
# 10-span traces at 4,000/s fill 24 GiB in 15 minutes), RSS sampled; prints the slope over the
# second half and the plateau beside README's sizing formula, and fails if either goal is missed.
SOAK_MINUTES ?= 30
SOAK_RATE ?= 4000
SOAK_SPANS ?= 2
soak: $(BIN)/caudal
	$(BIN)/python -m streams.devtools.soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE) --spans $(SOAK_SPANS)

clean:
	rm -rf $(VENV) caudal-state caudal-output demo-output bench-results.jsonl .pytest_cache .mypy_cache .ruff_cache
