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

# Both suites in parallel (pytest-xdist): most of their time is waiting (certbot's 1 s
# ACME polling, lock TTLs, outages, grace periods), so more workers than cores pay.
# Each worker runs whole files (module fixtures once), the slowest first
# (tests/conftest.py, SLOW_FIRST), with servers of its own on ports of its own
# (tests/servers.py, free_port). KVAULT_TEST_WORKERS sets the main suite's workers;
# `-n 0` among the arguments runs it in one process.
workers=${KVAULT_TEST_WORKERS:-4}
xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder)

# The lowest supported Python and versions (scripts/min-versions.txt): every
# module imported, then the tests that drive certbot itself, the trust tests
# (hostile records, key modes, diagnostics, fencing, profiles), the renewal
# memory and ARI with an acme that cannot read it, run again against certbot 2.7;
# and a fifth of the generated hostile records (tests/test_generated.py).
# Beside the main suite (each test process takes ports of its own), its output kept
# and shown after it. KVAULT_SKIP_MIN=1 skips it.
min_suite() {
    echo "[test] lowest supported versions (.venv-min: $(.venv-min/bin/python -V))"
    # The subset below does not import every module; a 3.10+ construct at import
    # time anywhere in the package fails here.
    .venv-min/bin/python -c 'import importlib, pkgutil, certbot_kvault as p
for m in pkgutil.walk_packages(p.__path__, p.__name__ + "."): importlib.import_module(m.name)'
    KVAULT_GENERATED_SHARE=0.2 .venv-min/bin/python -m pytest -q -p no:cacheprovider \
        -n 3 --dist loadfile --no-loadscope-reorder tests/test_roundtrip.py \
        tests/test_installer.py tests/test_errors.py tests/test_dns.py tests/test_dns_alias.py \
        tests/test_cli.py \
        tests/test_hostile.py tests/test_keymodes.py tests/test_diagnostics.py \
        tests/test_fencing.py tests/test_ari.py tests/test_due.py tests/test_memory.py \
        tests/test_profiles.py tests/test_jobs.py tests/test_bounds.py tests/test_accounts.py \
        tests/test_generated.py
}

min_pid=
min_log=
cleanup() {
    # The lowest versions' run is a process group of its own (set -m): ended whole,
    # by its id, should this script stop first.
    if [ -n "$min_pid" ]; then kill -- "-$min_pid" 2>/dev/null || true; fi
    if [ -n "$min_log" ]; then rm -f "$min_log"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$run_min" = 1 ]; then
    min_log=$(mktemp "${TMPDIR:-/tmp}/certbot-kvault-min.XXXXXX")
    set -m
    min_suite >"$min_log" 2>&1 &
    min_pid=$!
    set +m
fi

echo "[test] pytest -q ${xdist[*]} $* ($(.venv/bin/python -V))"
main_status=0
.venv/bin/pytest -q "${xdist[@]}" "$@" || main_status=$?

if [ "$run_min" = 1 ]; then
    min_status=0
    wait "$min_pid" || min_status=$?
    min_pid=
    cat "$min_log"
    if [ "$main_status" = 0 ] && [ "$min_status" != 0 ]; then
        exit "$min_status"
    fi
fi
exit "$main_status"
