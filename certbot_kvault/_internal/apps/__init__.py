"""The applications' side: lineages exported for apps, other tools' layouts imported.

``export`` (files, env lines, a Kubernetes Secret; an export directory belongs
to one lineage), ``watch`` (``export --watch``/``--once``: file sets switched
whole) and ``migrate`` (``import --from``: another tool's layout in Vault).

May import: sync, tree, dns, store, vault.
"""
