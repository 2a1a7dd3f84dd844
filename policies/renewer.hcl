# certbot-kvault: the renewer (CronJob, CI job, systemd timer, `certbot-kvault renew`/`run`/`push`).
#
# Least privilege for KV v2 mounted at `secret/` with KVAULT_PREFIX `certbot`
# (for another mount or prefix, replace `secret/` and `certbot/` below).
#
#   vault policy write certbot-renewer policies/renewer.hcl
#
# It may read and write certificates and ACME accounts, list the DNS provider
# entries (names only), and take, renew and release the renewal locks. It can
# never delete a certificate or an account (`certbot-kvault rm` is for an
# operator's token).
#
# DNS credentials are not in here: a renewer that issues with `-a kvault` also
# gets policies/dns-entry.hcl once per entry its lineages use (least power; with
# alias mode, only the validation zone's entry), or policies/dns-all.hcl.

# Lineages: read, create, update (check-and-set writes); list them, and read one's
# version numbers (metadata, no PEM): how a push tells a Vault restored from an
# older snapshot.
path "secret/data/certbot/certificates/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/certbot/certificates/*" {
  capabilities = ["list", "read"]
}

# ACME accounts (nested: accounts/<host>/<path>/<id>).
path "secret/data/certbot/accounts/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/certbot/accounts/*" {
  capabilities = ["list"]
}

# What renewers remember between stateless runs (state/<lineage>: failures,
# backoff, the CA's ARI window). Never a new version of a certificate.
path "secret/data/certbot/state/*" {
  capabilities = ["create", "read", "update"]
}

# The names of the DNS provider entries (never their values): the kvault
# authenticator picks, per name, the entry whose zones hold it among those
# this token may read.
path "secret/metadata/certbot/dns/" {
  capabilities = ["list"]
}

# Lease locks (`renew`): create with cas=0, renew and release with cas=N (a
# released lock is a record without owner), read the holder; metadata read
# finds the version of a soft-deleted lock; list finds per-lineage locks.
path "secret/data/certbot/locks/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/certbot/locks/*" {
  capabilities = ["read", "list"]
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
