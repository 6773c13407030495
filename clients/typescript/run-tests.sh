#!/usr/bin/env bash
# Builds the TypeScript client and runs its tests: unit tests against an
# in-memory fake, then the email scenario against the real Python server
# (test/e2e, which starts `ledger serve` on a fresh database itself).
# `make test` reaches it through tests/typescript/test_typescript_client.py.
#
# Env: LEDGER_PYTHON (the Python with the server; default ../../.venv/bin/python),
#      LEDGER_TEST_DATABASE_URL (admin URL; default postgresql://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "typescript client: SKIPPED (node not found)"
  exit 0
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "typescript client: SKIPPED (node $(node --version) found, 20 or newer needed)"
  exit 0
fi

echo "typescript client: npm ci (its prepare script builds: tsc, strict)"
npm ci --no-audit --no-fund --loglevel=error
echo "typescript client: check generated code"
npm run --silent generate:check
echo "typescript client: node --test"
node --test --test-concurrency=1 dist/test/unit/*.test.js dist/test/e2e/*.test.js
