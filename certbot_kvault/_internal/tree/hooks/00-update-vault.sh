#!/bin/sh
# certbot-kvault deploy hook: push the lineage certbot just issued or renewed
# ($RENEWED_LINEAGE) and its account to Vault.
#
# certbot runs every executable in renewal-hooks/deploy/ after each new
# certificate and each renewal. Vault settings come from the environment
# (VAULT_ADDR, VAULT_TOKEN, ...) and from the lineage's renewal conf
# (--kvault-* options). If the push fails, certbot only warns: the hook then
# leaves a pending mark that the next `certbot-kvault` command completes.
set -eu
KVAULT_BIN_DEFAULT="certbot-kvault"
KVAULT_BIN="${KVAULT_BIN:-$KVAULT_BIN_DEFAULT}"
if ! command -v "$KVAULT_BIN" >/dev/null 2>&1; then
    echo "certbot-kvault deploy hook: '$KVAULT_BIN' not found; lineage ${RENEWED_LINEAGE:-?} was NOT pushed to Vault. Set KVAULT_BIN or put certbot-kvault on PATH, then run: certbot-kvault push" >&2
    exit 1
fi
exec "$KVAULT_BIN" deploy-hook
