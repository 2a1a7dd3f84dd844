"""Renewing the fleet from Vault: what is due, who renews it, certbot, saving.

``due`` (certbot's rule: is it due), ``ari`` (asking the CA when), ``status``
(each lineage's renewal status as Vault tells it; remembering outcomes),
``plan`` (which lineages and locks this renewer takes), ``locks`` (lease locks
in KV v2), ``runner`` (certbot as a child process: its arguments, its
account, its failures), ``stopping`` (signals and deadlines), ``saving`` (the
fenced push tried again through outages), ``flows`` (``renew`` and ``run``),
``metrics``.

May import: sync, tree, dns, store, vault.
"""
