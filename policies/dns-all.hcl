# certbot-kvault: every DNS provider entry's credentials (what policies/renewer.hcl
# granted before per-entry policies existed). Prefer policies/dns-entry.hcl, once
# per entry a renewer's lineages use.
#
#   vault policy write certbot-dns-all policies/dns-all.hcl
path "secret/data/certbot/dns/*" {
  capabilities = ["read"]
}
