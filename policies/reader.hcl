# certbot-kvault: an application that reads its certificate from Vault
# (`certbot-kvault list`, `show`, `export`, an init container, Vault Agent...).
#
# Least privilege for KV v2 mounted at `secret/` with KVAULT_PREFIX `certbot`
# (for another mount or prefix, replace `secret/` and `certbot/` below).
#
#   vault policy write certbot-reader policies/reader.hcl
#
# Read and list certificates (and their version numbers) only: no accounts, no
# DNS credentials, no locks, no writes. To let an app read just its own
# lineage, replace `*` in the data and metadata paths with the lineage name.
path "secret/data/certbot/certificates/*" {
  capabilities = ["read"]
}
# read on metadata: `export --watch` polls a lineage's current version there (no
# key material) and reads the certificate only when it changed.
path "secret/metadata/certbot/certificates/*" {
  capabilities = ["list", "read"]
}

# What Vault's `default` policy already grants, repeated for tokens made with
# no_default_policy: KV version detection, "who am I", renewing our own token
# during long runs, and `certbot-kvault status` asking what this token may do.
path "sys/internal/ui/mounts/secret" {
  capabilities = ["read"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}
