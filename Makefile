# idhub developer entry points. `make run` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
IDHUB := $(BIN)/idhub
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test install install-test system-deps node-deps bench-peer-deps bench lint typecheck clean demo
.PHONY: test-faults

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP) $@

install: $(STAMP)
install-test: $(TEST_STAMP)

run: $(STAMP)
	bash .ci/system-deps --run
	$(IDHUB) init --demo
	$(IDHUB) serve

# idhub on 8000 with the OA (8001) and reimbursement (8002) examples; Ctrl-C stops all three.
EXAMPLES_STAMP := $(VENV)/.installed-examples
$(EXAMPLES_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[examples]'
	touch $(STAMP) $@

demo: $(EXAMPLES_STAMP)
	bash .ci/system-deps --run
	$(BIN)/python -m examples.demo

system-deps:
	bash .ci/system-deps

node-deps:
	cd tests/rp_node && npm ci --no-audit --no-fund --silent

test: install-test system-deps node-deps
	$(BIN)/python -m pytest -q

# Only the fault suite (a throwaway PostgreSQL restarted and paused, replicas killed, a full
# disk); `make test` runs it too.
test-faults: install-test system-deps
	$(BIN)/python -m pytest -q -m fault

# The Node peer bench/bench_peer.py measures idhub against (oidc-provider, pinned by the lock file).
PEER_STAMP := bench/peer/node_modules/oidc-provider/package.json
$(PEER_STAMP): bench/peer/package-lock.json
	cd bench/peer && npm ci --no-audit --no-fund --silent
	touch $@
bench-peer-deps: $(PEER_STAMP)

bench: install-test system-deps
	bash .ci/system-deps --bench
	$(MAKE) bench-peer-deps
	$(BIN)/python bench/run_all.py

lint: install-test
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: install-test
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
