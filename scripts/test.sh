#!/usr/bin/env bash
# Set up, lint, type-check and run the test-suite. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "[test] ruff check certbot_kvault tests"
.venv/bin/ruff check certbot_kvault tests

echo "[test] mypy"
.venv/bin/mypy

echo "[test] pytest -q $*"
.venv/bin/pytest -q "$@"
