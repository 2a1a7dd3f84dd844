#!/usr/bin/env bash
# Set up, lint, type-check and run the test-suite. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."

# .venv-min is set up (and its Python found) first, so a missing one fails in seconds.
run_min=0
if [ "${KVAULT_SKIP_MIN:-0}" != 1 ] && [ "$#" -eq 0 ]; then
    run_min=1
    bash scripts/setup.sh --min
else
    bash scripts/setup.sh
fi

echo "[test] ruff check certbot_kvault tests bench"
.venv/bin/ruff check certbot_kvault tests bench

echo "[test] mypy (the package; bench/ strict too, since its ratios are the performance record)"
.venv/bin/mypy
.venv/bin/mypy --strict --python-version 3.10 bench

echo "[test] pytest -q $* ($(.venv/bin/python -V))"
.venv/bin/pytest -q "$@"

# The lowest supported Python and versions (scripts/min-versions.txt): every
# module imported, then the tests that drive certbot itself, the trust tests
# (hostile records, key modes, diagnostics, fencing, profiles), the renewal
# memory and ARI with an acme that cannot read it, run again against certbot 2.7;
# and a fifth of the generated hostile records (tests/test_generated.py).
# After the main suite, not beside it: a renewal's http-01 port is free between
# renewals, and a second test session's servers may take it meanwhile.
# KVAULT_SKIP_MIN=1 skips it.
if [ "$run_min" = 1 ]; then
    echo "[test] lowest supported versions (.venv-min: $(.venv-min/bin/python -V))"
    # The subset below does not import every module; a 3.10+ construct at import
    # time anywhere in the package fails here.
    .venv-min/bin/python -c 'import importlib, pkgutil, certbot_kvault as p
for m in pkgutil.walk_packages(p.__path__, p.__name__ + "."): importlib.import_module(m.name)'
    KVAULT_GENERATED_SHARE=0.2 .venv-min/bin/python -m pytest -q -p no:cacheprovider \
        tests/test_roundtrip.py \
        tests/test_installer.py tests/test_errors.py tests/test_dns.py tests/test_dns_alias.py \
        tests/test_cli.py \
        tests/test_hostile.py tests/test_keymodes.py tests/test_diagnostics.py \
        tests/test_fencing.py tests/test_ari.py tests/test_due.py tests/test_memory.py \
        tests/test_profiles.py tests/test_jobs.py tests/test_bounds.py tests/test_accounts.py \
        tests/test_generated.py
fi
