#!/usr/bin/env bash
# README command 2: install everything the tests need, start the services, run lint, types,
# import contracts and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
scripts/services.sh
scripts/postgres.sh
export PATH="$PWD/.venv/bin:$PATH"
# The PC/SC end-to-end tests must run here, not skip.
export IOTID_REQUIRE_PCSC=1
# ... and so must the fleet's PostgreSQL tests (SQLite and PostgreSQL both run in CI).
export IOTID_REQUIRE_POSTGRES=1
# ... and so must the dashboard's browser tests (Playwright driving Debian's chromium).
export IOTID_REQUIRE_BROWSER=1
echo "== ruff";          ruff check src tests bench
echo "== ruff format";   ruff format --check src tests bench
echo "== mypy";          mypy
echo "== import-linter"; lint-imports
echo "== pytest";        pytest -q -n 2 "$@"   # 2 workers: the machine has 2 cores
