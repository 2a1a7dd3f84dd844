#!/bin/sh
# certbot-kvault container entrypoint (POSIX sh).
#
#   certbot-kvault SUBCOMMAND ...  run certbot-kvault itself (e.g. `certbot-kvault renew`)
#   [certbot] CERTBOT-ARGS ...     pull the config dir from Vault, run certbot with
#                                  CERTBOT-ARGS, push everything back; exit with
#                                  certbot's status if it failed, else non-zero if
#                                  Vault does not hold what certbot produced
#   (no arguments)                 certbot-kvault renew
#
# Directories: KVAULT_CONFIG_DIR (default /etc/letsencrypt), KVAULT_WORK_DIR
# (/var/lib/letsencrypt), KVAULT_LOGS_DIR (/var/log/letsencrypt).
# Vault settings and credentials come from the environment (VAULT_ADDR,
# VAULT_TOKEN, VAULT_ROLE_ID/VAULT_SECRET_ID, KVAULT_K8S_ROLE, KVAULT_JWT_ROLE...).
set -eu

KVAULT_BIN="${KVAULT_BIN:-certbot-kvault}"
KVAULT_CONFIG_DIR="${KVAULT_CONFIG_DIR:-/etc/letsencrypt}"
KVAULT_WORK_DIR="${KVAULT_WORK_DIR:-/var/lib/letsencrypt}"
KVAULT_LOGS_DIR="${KVAULT_LOGS_DIR:-/var/log/letsencrypt}"
export KVAULT_CONFIG_DIR

if [ "$#" -eq 0 ]; then
    set -- certbot-kvault renew
fi

case "$1" in
    certbot-kvault)
        shift
        case "${1:-}" in
            # Subcommands that work on the config dir get the container's dirs.
            pull|push|import|run|renew|deploy-hook)
                sub="$1"
                shift
                exec "$KVAULT_BIN" "$sub" --config-dir "$KVAULT_CONFIG_DIR" \
                    --work-dir "$KVAULT_WORK_DIR" --logs-dir "$KVAULT_LOGS_DIR" "$@"
                ;;
            *)
                exec "$KVAULT_BIN" "$@"
                ;;
        esac
        ;;
    certbot)
        # `docker run IMAGE certbot certonly ...` = `docker run IMAGE certonly ...`
        shift
        ;;
esac

# pull -> certbot "$@" -> push, with a read-back check; certbot's exit status wins.
exec "$KVAULT_BIN" run --config-dir "$KVAULT_CONFIG_DIR" --work-dir "$KVAULT_WORK_DIR" \
    --logs-dir "$KVAULT_LOGS_DIR" -- "$@"
