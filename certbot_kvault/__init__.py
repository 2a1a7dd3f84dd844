"""
The `~certbot_kvault` plugin keeps all of certbot's state -- ACME accounts,
certificate lineages and renewal settings -- in HashiCorp Vault or OpenBao KV,
and solves DNS-01 challenges through any dns-lexicon provider whose
credentials are stored in Vault. The local config dir becomes a cache that
any container, CronJob or CI job can rebuild with ``certbot-kvault pull``.

Named Arguments
---------------

=====================================  =========================================
``--kvault-dns NAME``                  DNS credentials: the Vault entry
                                       ``<mount>/<prefix>/dns/NAME`` for the
                                       names no entry claims with its ``zones``
                                       (default: the only entry, if there is
                                       exactly one)
``--kvault-dns-alias NAME=TARGET``     Alias mode without a CNAME lookup:
                                       NAME's TXT record goes to TARGET
                                       (several: ``N=T,N=T``); without it,
                                       ``_acme-challenge`` CNAMEs are followed
``--kvault-dns-check``                 Before ordering, create, see answered
                                       and delete a test TXT for every name
``--kvault-propagation-timeout SECS``  How long to wait for every authoritative
                                       server to answer the TXT record (120)
``--kvault-dns-resolver HOST[:PORT]``  Ask this server for propagation (and
                                       CNAMEs) instead of the zone's
                                       authoritative servers
``--kvault-propagation-seconds SECS``  Extra fixed wait after the check (0)
``--kvault-vault-addr URL``            Vault address (default ``$VAULT_ADDR``)
``--kvault-vault-namespace NS``        Vault namespace (``$VAULT_NAMESPACE``)
``--kvault-vault-cacert FILE``         CA bundle for Vault (``$VAULT_CACERT``)
``--kvault-mount MOUNT``               KV mount (``$KVAULT_MOUNT``, ``secret``)
``--kvault-prefix PREFIX``             Path below the mount (``$KVAULT_PREFIX``,
                                       ``certbot``)
=====================================  =========================================

Tokens are never options (an option is saved in the renewal conf, and the
renewal conf is saved in Vault): they come from the environment, as for the
``vault`` CLI.

Vault connection
----------------

The same variables as the ``vault`` CLI: ``VAULT_ADDR``, ``VAULT_TOKEN``
(else ``~/.vault-token``), ``VAULT_NAMESPACE``, ``VAULT_CACERT``,
``VAULT_CAPATH``, ``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY``,
``VAULT_SKIP_VERIFY``. Machine logins: AppRole (``VAULT_ROLE_ID`` +
``VAULT_SECRET_ID``, mount ``KVAULT_APPROLE_MOUNT``), Kubernetes
(``KVAULT_K8S_ROLE``, token file ``KVAULT_K8S_TOKEN_PATH``, mount
``KVAULT_K8S_MOUNT``), JWT/OIDC for CI (``KVAULT_JWT_ROLE`` + ``KVAULT_JWT``
or ``KVAULT_JWT_FILE``, mount ``KVAULT_JWT_MOUNT``). KV v1 and v2 mounts both
work; the version is detected. Long runs renew their token.

Security model
--------------

Every renewer may write every lineage, so what ``certbot-kvault pull``,
``renew`` and ``run`` take from Vault is data, never code: hooks, an installer
other than kvault, machine paths (webroot, credential files, other plugins'
options) and the Vault connection settings saved by this plugin are dropped
from pulled renewal confs, with one warning per lineage; this machine's own
values are kept. ``--trust-vault-hooks`` (``KVAULT_TRUST_VAULT_HOOKS=1``) keeps
hooks and paths, at the risk that anyone who can write ``certificates/*`` can
then run commands on the machine; connection settings are never taken.

Layout in Vault (below ``<mount>/<prefix>/``)
---------------------------------------------

``accounts/<server>/<id>``
    ``meta``, ``private_key``, ``regr`` (certbot's JSON texts), ``server``.
``certificates/<lineage>``
    ``cert``, ``chain``, ``fullchain``, ``privkey``, ``renewal`` (the renewal
    conf without machine paths), ``version``, ``domains``, ``not_before``,
    ``not_after``, ``serial``, ``key_type``, ``auto_renewable``,
    ``updated_at``, ``archive`` (the earlier archive versions, so a
    pulled tree is identical to the pushed one) and ``issued`` (how this
    version was issued: ACME server, account, challenge, DNS entry and alias
    target, versions, host, the Vault token's display name; no secret).
``dns/<name>``
    ``provider`` (a dns-lexicon provider), optionally ``zones`` (the zones the
    entry serves: each name of an order goes to the entry with the longest
    zone holding it) and that provider's options.
``locks/<name>``
    ``owner``, ``expires_at``: the renewal lease lock (KV v2 only).

Examples
--------

.. code-block:: bash
   :caption: Store DNS credentials, then issue with DNS-01; the account and the
             certificate end up in Vault with no extra flag

   certbot-kvault dns add pdns --provider powerdns \\
       --option auth_token=@/run/secrets/pdns-token \\
       --option pdns_server=https://pdns:8081 --option pdns_server_id=localhost
   certbot certonly --authenticator kvault --kvault-dns pdns \\
       -d example.com -d '*.example.com'

.. code-block:: bash
   :caption: Alias mode: _acme-challenge.www.example.com is a CNAME into a
             validation zone; the only credentials are that zone's

   certbot-kvault dns add validation --provider powerdns --zone acme.example.net \\
       --option auth_token=@/run/secrets/val-token --option pdns_server=https://pdns:8081
   certbot-kvault dns check validation --domain www.example.com
   certbot certonly --authenticator kvault -d www.example.com

.. code-block:: bash
   :caption: Keep using another authenticator; store the result in Vault

   certbot certonly --standalone -i kvault -d www.example.com

.. code-block:: bash
   :caption: Stateless renewal in a fresh container

   certbot-kvault renew            # lock, pull, certbot renew, push, unlock

.. code-block:: bash
   :caption: Give an application its certificate (init container)

   certbot-kvault export example.com --dir /certs      # cert/chain/fullchain/privkey.pem
   eval "$(certbot-kvault export example.com --format env)"

.. code-block:: bash
   :caption: Migrate an existing /etc/letsencrypt

   certbot-kvault import --config-dir /etc/letsencrypt
"""
