"""The Vault connection: settings, errors, the HTTP session, logins, the KV client.

The only area that knows Vault's routes and URLs. ``settings`` reads
``VAULT_*``/``KVAULT_*`` as the vault CLI does (and holds the option tables of
the CLI and the plugin); ``errors`` has one class per failure kind and its
sentence; ``redact`` keeps secrets out of error texts and logs; ``session`` is
the HTTP session (TLS, retries, HA consistency); ``auth`` the logins;
``client`` the KV client (``VaultClient``).

May import: nothing of certbot-kvault outside this area.
"""
