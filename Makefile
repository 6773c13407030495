# Creditledger. Two commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
GEN_DIR := clients/python
PROTO := protos/creditledger/v1/ledger.proto

.PHONY: run test install proto proto-check lint typecheck unit bench torture soak failover clean lock

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"

# Re-install whenever a pyproject or the lock changes. Third-party packages come
# from requirements/dev.lock, every file checked by hash; this repository's two
# packages by path, never from an index (--no-index --no-deps). `pip check`
# fails when the lock lacks a dependency a pyproject gained: run `make lock`.
$(STAMP): $(PY) pyproject.toml clients/python/pyproject.toml requirements/dev.lock
	$(PIP) install --quiet --require-hashes -r requirements/dev.lock
	$(PIP) install --quiet --no-index --no-deps --no-build-isolation -e ./clients/python -e '.[dev]'
	$(PIP) check || { echo "requirements/dev.lock is stale: run make lock"; exit 1; }
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

## Hours of mixed load with retention shortened to minutes (SOAK_MINUTES, default 20):
## see docs/performance.md, "Soak". Needs root (initdb runs as `postgres`).
soak: $(STAMP)
	$(PY) -m tests.bench.soak --minutes $${SOAK_MINUTES:-20} $(SOAK_ARGS)

## The consistency checker with the fault injector (TORTURE_SECONDS, default 120).
torture: $(STAMP)
	$(PY) -m tests.torture --seconds $${TORTURE_SECONDS:-120} $(TORTURE_ARGS)

## Refresh requirements/*.lock: exact versions with the SHA-256 of every file
## (pip-tools), from both pyproject.toml, resolved against PyPI alone (--isolated:
## no local mirrors or find-links in the hashes). The Dockerfile installs from them.
lock: $(PY)
	$(PIP) install --quiet "pip-tools>=7.4,<8"
	$(PY) deploy/lock.py
	for f in server dev; do \
	  $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links --pip-args "--isolated" \
	    -o requirements/$$f.lock requirements/$$f.in || exit 1; \
	done

## The ledger on a real HA PostgreSQL (Patroni + etcd, three nodes) through five faults:
## see docs/operations.md. FAILOVER_ARGS=--scenarios kill,hang for a subset.
failover: $(STAMP)
	./deploy/install-test-tools.sh
	$(PY) -m tests.failover $(FAILOVER_ARGS)

clean:
	rm -rf $(VENV) .ledger-data .mypy_cache .ruff_cache .pytest_cache
