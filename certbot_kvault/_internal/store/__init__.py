"""What lives in Vault: the records, where each lives, what bounds them.

``records`` (lineages and accounts: fields, validation), ``state`` (the renewal
memory, ``state/<lineage>``), ``limits`` (the bounds every record from Vault is
held to), ``timefmt`` (the times records hold) and ``layout`` (where each record
lives, in domain words). Nothing here knows the config dir.

May import: vault.
"""
