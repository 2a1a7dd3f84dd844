"""The applications' side: exporting lineages for apps, and importing other tools'.

``export`` (files, env lines, a Kubernetes Secret; an export directory belongs
to one lineage), ``watch`` (``export --watch``/``--once``) and ``migrate``
(``import --from``: another tool's layout in Vault).

May import: sync, tree, dns, store, vault.
"""
