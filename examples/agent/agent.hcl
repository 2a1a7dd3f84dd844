# OpenBao Agent / Vault Agent: keep one lineage's files current on a host and reload
# the app when certbot-kvault pushes a renewal (same file for `bao agent` and
# `vault agent`).
#
#   bao agent -config=/etc/vault-agent/agent.hcl
#
# The agent logs in with AppRole holding policies/reader.hcl (read certificates only),
# renders the templates next to this file from the lineage's record
# (secret/data/certbot/certificates/example.com: edit the path in each template), and
# reads the record again every static_secret_render_interval: a KV secret has no
# lease, so that interval is how soon a renewal reaches the files.
vault {
  address = "https://vault.example.com:8200"
  # ca_cert = "/etc/vault-agent/vault-ca.pem"
}

auto_auth {
  method "approle" {
    config = {
      role_id_file_path   = "/etc/vault-agent/role-id"
      secret_id_file_path = "/etc/vault-agent/secret-id"
      # Keep the file: the agent reads it again after a restart.
      remove_secret_id_file_after_reading = false
    }
  }
}

template_config {
  static_secret_render_interval = "5m"
  # A template error (see error_on_missing_key) or Vault failing beyond the retries
  # stops the agent with a non-zero exit instead of retrying unseen forever.
  exit_on_retry_failure = true
}

# Each file is written on its own (temp file + rename). A change of the record renders
# all three in one run, and the reload, the same command in each, runs once after it.
template {
  source      = "/etc/vault-agent/templates/fullchain.pem.ctmpl"
  destination = "/etc/ssl/example.com/fullchain.pem"
  perms       = "0644"
  # A field the record lacks (a typo in a template) is an error, not the text
  # "<no value>" in the file.
  error_on_missing_key = true
  exec {
    command = ["systemctl", "reload", "nginx"]
  }
}

template {
  source               = "/etc/vault-agent/templates/privkey.pem.ctmpl"
  destination          = "/etc/ssl/example.com/privkey.pem"
  perms                = "0600"
  error_on_missing_key = true
  exec {
    command = ["systemctl", "reload", "nginx"]
  }
}

template {
  source               = "/etc/vault-agent/templates/bundle.pem.ctmpl"
  destination          = "/etc/ssl/example.com/bundle.pem"
  perms                = "0600"
  error_on_missing_key = true
  exec {
    command = ["systemctl", "reload", "nginx"]
  }
}
