#!/usr/bin/env bash
# The whole certbot-kvault story on a local OpenBao + Pebble + PowerDNS:
# issue with -a kvault (DNS-01, credentials in Vault), lose the config dir,
# renew statelessly from Vault. Sets the machine up first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
