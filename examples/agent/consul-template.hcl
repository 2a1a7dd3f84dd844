# consul-template: the same templates as agent.hcl, for hosts that already run it.
#
#   VAULT_TOKEN=... consul-template -config=/etc/consul-template/consul-template.hcl
#
# consul-template does not log in by itself: give it a token holding
# policies/reader.hcl (VAULT_TOKEN), or the file a Vault/OpenBao agent keeps current
# (vault_agent_token_file). A KV secret has no lease, so default_lease_duration says
# how often the record is read again (how soon a renewal reaches the files).
vault {
  address = "https://vault.example.com:8200"
  # vault_agent_token_file = "/run/vault-agent/token"
  renew_token            = false
  default_lease_duration = "5m"
}

template {
  source               = "/etc/consul-template/templates/fullchain.pem.ctmpl"
  destination          = "/etc/ssl/example.com/fullchain.pem"
  perms                = 0644
  error_on_missing_key = true
  command              = "systemctl reload nginx"
}

template {
  source               = "/etc/consul-template/templates/privkey.pem.ctmpl"
  destination          = "/etc/ssl/example.com/privkey.pem"
  perms                = 0600
  error_on_missing_key = true
  command              = "systemctl reload nginx"
}

template {
  source               = "/etc/consul-template/templates/bundle.pem.ctmpl"
  destination          = "/etc/ssl/example.com/bundle.pem"
  perms                = 0600
  error_on_missing_key = true
  command              = "systemctl reload nginx"
}
