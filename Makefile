# Two commands do all the set-up on a fresh machine; both create and use .venv themselves.
#   make demo   run the local MoR demo (synthetic world, SFT warm start, ... ) and print a result table
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mor-installed

.PHONY: demo test venv clean-venv protos

$(STAMP): pyproject.toml deploy/constraints-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c deploy/constraints-cpu.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mor demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# Regenerate the gRPC stubs after editing protos/ (the test suite fails while they are stale).
protos: $(STAMP)
	$(BIN)/python -m services.common.wire.generate
	@if [ -x node_modules/.bin/buf ]; then node_modules/.bin/buf lint protos; fi
