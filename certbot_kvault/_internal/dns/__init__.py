"""DNS-01: provider entries from Vault, plain DNS, and one run's challenge work.

``entries`` (provider entries in Vault, which one hosts a name, dns-lexicon),
``propagation`` (CNAME chains, the active propagation check) and ``challenge``
(one run's plan and TXT records, shared by the plugin and ``dns check``).

May import: store, vault.
"""
