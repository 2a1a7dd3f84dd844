"""Moving certbot state between the config dir and Vault.

``pull`` (Vault -> layout -> records -> tree) and ``push`` (the reverse, only
what changed, fenced under ``renew``), item by item over ``jobs``' bounded
thread pool; ``issued`` (how each version was issued: the plugin's notes in the
config dir, the field a push stamps on a new version).

May import: tree, dns, store, vault.
"""
