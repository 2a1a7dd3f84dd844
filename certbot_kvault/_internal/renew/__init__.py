"""Renewing the fleet from Vault: what is due, who renews it, certbot, saving.

``due`` (certbot's rule: is it due), ``ari`` (asking the CA), ``status`` (each
lineage's renewal status as Vault tells it, and remembering outcomes), ``plan``
(which lineages and locks this renewer takes), ``locks`` (lease locks in KV),
``runner`` (certbot as a child process, its arguments), ``stopping`` (signals
and deadlines), ``saving`` (the fenced push retried through outages),
``flows`` (``renew`` and ``run``), ``metrics``.

May import: sync, tree, dns, store, vault.
"""
