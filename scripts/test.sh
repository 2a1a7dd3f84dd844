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

# The lowest supported Python and versions (scripts/min-versions.txt): every
# module imported, then the tests that drive certbot itself, the trust tests
# (hostile records, key modes, diagnostics, fencing, profiles), the renewal
# memory and ARI with an acme that cannot read it, run again against certbot 2.7.
# It runs beside the main suite (own servers on free ports, own temp dir): both
# spend much of their time waiting on leases, renewals and outages they stage,
# so on 2 cores the two together take little longer than the main suite alone.
# KVAULT_SKIP_MIN=1 skips it.
min_pid=""
min_log=""
if [ "$run_min" = 1 ]; then
    min_log="$(mktemp -t kvault-min-XXXXXX.log)"
    min_tmp="$(mktemp -d -t kvault-min-XXXXXX)"
    (
        set -e
        echo "[test] lowest supported versions (.venv-min: $(.venv-min/bin/python -V))"
        # The subset below does not import every module; a 3.10+ construct at import
        # time anywhere in the package fails here.
        .venv-min/bin/python -c 'import importlib, pkgutil, certbot_kvault as p
for m in pkgutil.walk_packages(p.__path__, p.__name__ + "."): importlib.import_module(m.name)'
        .venv-min/bin/python -m pytest -q -p no:cacheprovider --basetemp "$min_tmp/t" \
            tests/test_roundtrip.py tests/test_installer.py tests/test_errors.py \
            tests/test_dns.py tests/test_cli.py tests/test_hostile.py tests/test_keymodes.py \
            tests/test_diagnostics.py tests/test_fencing.py tests/test_ari.py \
            tests/test_due.py tests/test_memory.py tests/test_profiles.py
    ) > "$min_log" 2>&1 &
    min_pid=$!
fi

echo "[test] pytest -q $* ($(.venv/bin/python -V))"
main_rc=0
.venv/bin/pytest -q "$@" || main_rc=$?

min_rc=0
if [ -n "$min_pid" ]; then
    wait "$min_pid" || min_rc=$?
    cat "$min_log"
    rm -rf "$min_log" "$min_tmp"
fi
if [ "$main_rc" != 0 ] || [ "$min_rc" != 0 ]; then
    echo "[test] FAILED: main suite exit $main_rc, lowest versions exit $min_rc"
    exit 1
fi
