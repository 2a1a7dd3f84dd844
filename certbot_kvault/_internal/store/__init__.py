"""What lives in Vault: the records, where each lives, what bounds them.

``records`` (lineages and accounts: fields, names, PEM and key checks),
``state`` (the renewal memory, ``state/<lineage>``), ``limits`` (the numbers
every record from Vault is held to), ``timefmt`` (the RFC 3339 times records
hold) and ``layout`` (where each record lives, in domain words). Nothing here
knows the config dir.

May import: vault.
"""
