# Creditledger. Two commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
GEN_DIR := clients/python
PROTO := protos/creditledger/v1/ledger.proto

.PHONY: run test install proto proto-check lint typecheck unit bench torture failover clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"

# Re-install whenever a pyproject changes.
$(STAMP): $(PY) pyproject.toml clients/python/pyproject.toml
	$(PIP) install --quiet -e ./clients/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Serve on 127.0.0.1:50051 with the embedded PostgreSQL under .ledger-data/.
run: $(STAMP)
	$(VENV)/bin/ledger serve --log-format text

## Regenerate the Python stubs (and their .pyi types) from protos/.
proto: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
	  --mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) $(PROTO)

## Fails when the committed stubs differ from what `make proto` makes.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d); \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I protos --python_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO) && \
	for f in $$(cd $$tmp && find . -name '*_pb2*'); do \
	  cmp -s $$tmp/$$f $(GEN_DIR)/$$f || { echo "generated $$f is stale: run make proto"; exit 1; }; \
	done; echo "proto-check: generated stubs are up to date"
	$(VENV)/bin/buf lint
	@echo "buf lint: clean"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy ledger tests clients/python/creditledger_client

## Everything the tests need, then the whole suite.
test: $(STAMP)
	$(MAKE) proto-check lint typecheck
	./deploy/install-test-tools.sh
	$(PY) -m pytest -q -p no:cacheprovider

## The benchmark (not part of `make test`): see docs/performance.md.
bench: $(STAMP)
	$(PY) -m tests.bench $(BENCH_ARGS)

## The consistency checker with the fault injector (TORTURE_SECONDS, default 120).
torture: $(STAMP)
	$(PY) -m tests.torture --seconds $${TORTURE_SECONDS:-120} $(TORTURE_ARGS)

## The ledger on a real HA PostgreSQL (Patroni + etcd, three nodes) through five faults:
## see docs/operations.md. FAILOVER_ARGS=--scenarios kill,hang for a subset.
failover: $(STAMP)
	./deploy/install-test-tools.sh
	$(PY) -m tests.failover $(FAILOVER_ARGS)

clean:
	rm -rf $(VENV) .ledger-data .mypy_cache .ruff_cache .pytest_cache
