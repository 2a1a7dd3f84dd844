"""Which certbot ``--kvault-*`` option sets which Vault setting.

Shared by the plugin (which reads the options) and the CLI's deploy hook
(which reads them back from a lineage's renewal conf), so that neither has
to import the other.
"""
from __future__ import annotations

# --kvault-<option> -> VaultSettings field. Tokens are never options: an
# option ends up in the renewal conf, and the renewal conf goes to Vault.
SETTING_OPTIONS = {
    "vault-addr": "addr",
    "vault-namespace": "namespace",
    "vault-cacert": "cacert",
    "mount": "mount",
    "prefix": "prefix",
}
