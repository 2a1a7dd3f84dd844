# certbot-kvault: one DNS provider entry's credentials, for a renewer whose
# lineages use it (next to policies/renewer.hcl). Write one per entry, replacing
# ENTRY (and `secret/`, `certbot/` for another mount or prefix):
#
#   sed 's/ENTRY/validation/' policies/dns-entry.hcl \
#       | vault policy write certbot-dns-validation -
#   vault write auth/approle/role/renewer \
#       token_policies=certbot-renewer,certbot-dns-validation
#
# With alias mode (`_acme-challenge.www.example.com` a CNAME into a validation
# zone of its own), the only entry a renewer needs is the validation zone's, so
# a leaked renewer token can write TXT records there and nowhere else in DNS.
path "secret/data/certbot/dns/ENTRY" {
  capabilities = ["read"]
}
