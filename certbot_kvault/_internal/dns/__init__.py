"""DNS-01: provider entries from Vault, plain DNS, and one run's challenge work.

``entries`` (provider entries in Vault and which one hosts a name, through
dns-lexicon), ``propagation`` (CNAME chains, the propagation check) and
``challenge`` (the plan and TXT records of one run, shared by the plugin and
``dns check``).

May import: store, vault.
"""
