#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine (as root) for certbot-kvault's tests:
# Debian packages for the real servers (pebble, PowerDNS) and a .venv with the package.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '[setup] %s\n' "$*"; }

APT_PACKAGES=(pebble pdns-server pdns-backend-sqlite3 sqlite3 openssl)

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

if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
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
log "done"
