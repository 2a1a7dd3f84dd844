"""The certbot plugin ``kvault``: a DNS-01 authenticator and an installer in one class.

As an installer it stores every certificate it is given in Vault and wires
the deploy hook into the config dir, so that issuance and every renewal push
the lineage (certbot never calls an installer's ``deploy_cert`` on
``certonly`` or ``renew``; it always runs ``renewal-hooks/deploy/``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Optional

from certbot import errors, interfaces
from certbot.plugins import dns_common_lexicon

from certbot_kvault._internal import sync
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.tree import Dirs, Tree
from certbot_kvault._internal.vault import VaultClient, VaultError, VaultSettings

logger = logging.getLogger(__name__)

# --kvault-<option> -> VaultSettings field. Tokens are never options: an
# option ends up in the renewal conf, and the renewal conf goes to Vault.
SETTING_OPTIONS = {
    "vault-addr": "addr",
    "vault-namespace": "namespace",
    "vault-cacert": "cacert",
    "mount": "mount",
    "prefix": "prefix",
}


class Authenticator(dns_common_lexicon.LexiconDNSAuthenticator, interfaces.Installer):
    """kvault: certbot state and DNS credentials in Vault / OpenBao."""

    description = ("Obtain certificates with DNS-01 through any dns-lexicon provider whose "
                   "credentials are in Vault, and store every certificate in Vault.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._vault: Optional[VaultClient] = None
        self._pushed: set[str] = set()

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None],
                             default_propagation_seconds: int = 0) -> None:
        super().add_parser_arguments(add, default_propagation_seconds=default_propagation_seconds)
        add("dns", metavar="NAME", default=None,
            help="DNS credentials to use: the Vault entry <mount>/<prefix>/dns/NAME "
                 "(default: the only entry, if there is exactly one).")
        add("propagation-timeout", type=int, default=120, metavar="SECONDS",
            help="How long to wait for every authoritative server to answer the TXT record.")
        add("dns-resolver", metavar="HOST[:PORT]", default=None,
            help="Ask this DNS server for propagation instead of the zone's authoritative "
                 "servers.")
        add("vault-addr", default=None, help="Vault address (default: $VAULT_ADDR).")
        add("vault-namespace", default=None, help="Vault namespace (default: $VAULT_NAMESPACE).")
        add("vault-cacert", default=None, help="CA bundle for Vault (default: $VAULT_CACERT).")
        add("mount", default=None, help="KV mount (default: $KVAULT_MOUNT or 'secret').")
        add("prefix", default=None, help="Prefix in the mount (default: $KVAULT_PREFIX or "
                                         "'certbot').")

    def more_info(self) -> str:
        return ("Keeps certbot accounts, certificates and renewal settings in Vault KV and "
                "solves DNS-01 with dns-lexicon using credentials stored in Vault.")

    # ---- Vault ------------------------------------------------------------------

    def _settings(self) -> VaultSettings:
        overrides = {field: self.conf(option) for option, field in SETTING_OPTIONS.items()}
        return VaultSettings.from_env(**overrides)

    @property
    def vault(self) -> VaultClient:
        if self._vault is None:
            self._vault = VaultClient(self._settings())
        return self._vault

    @property
    def layout(self) -> Layout:
        return Layout(self.vault)

    def _tree(self) -> Tree:
        return Tree(Dirs(config_dir=self.config.config_dir, work_dir=self.config.work_dir,
                         logs_dir=self.config.logs_dir))

    def prepare(self) -> None:
        """Fail before any ACME order if Vault is unusable; wire the deploy hook."""
        try:
            self.vault.login()
            _ = self.vault.kv_version
        except VaultError as e:
            raise errors.PluginError(f"kvault: {e}") from None
        from certbot_kvault._internal.cli import kvault_bin

        hook = self._tree().install_hook(kvault_bin())
        logger.debug("kvault deploy hook at %s", hook)

    # ---- Installer ---------------------------------------------------------------

    def get_all_names(self) -> Iterable[str]:
        return []

    def deploy_cert(self, domain: str, cert_path: str, key_path: str, chain_path: str,
                    fullchain_path: str) -> None:
        """Push the lineage holding ``cert_path`` (once, though certbot calls per domain)."""
        tree = self._tree()
        live = os.path.dirname(os.path.abspath(cert_path))
        name = tree.lineage_for_live_path(live)
        if name in self._pushed:
            return
        try:
            report = sync.push(tree, self.layout, [name])
        except VaultError as e:
            report = sync.Report(failed=[(f"lineage {name}", str(e))])
        if not report.ok:
            reason = "; ".join(f"{i}: {e}" for i, e in report.failed)
            sync.mark_pending(tree, name, reason)
            raise errors.PluginError(
                f"kvault could not store {name} in Vault ({reason}). Fix the cause, then run "
                f"`certbot-kvault push --config-dir {tree.config_dir} {name}`.")
        self._pushed.add(name)

    def enhance(self, domain: str, enhancement: str,
                options: Optional[Any] = None) -> None:
        raise errors.PluginError("kvault stores certificates in Vault; it has no "
                                 f"enhancements ({enhancement}).")

    def supported_enhancements(self) -> list[str]:
        return []

    def save(self, title: Optional[str] = None, temporary: bool = False) -> None:
        """Nothing to save: every deploy_cert writes to Vault at once."""

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        """Vault keeps versions (KV v2); there are no local checkpoints to roll back."""

    def recovery_routine(self) -> None:
        """Nothing is held back between deploy_cert and save."""

    def config_test(self) -> None:
        """Vault was checked in prepare()."""

    def restart(self) -> None:
        """Nothing to restart: applications read their certificate from Vault."""

    # ---- Authenticator (DNS-01 through dns-lexicon) ------------------------------------

    @property
    def _provider_name(self) -> str:
        raise NotImplementedError  # filled in by the DNS authenticator work (dns.py)

    def _setup_credentials(self) -> None:
        raise errors.PluginError("kvault DNS-01 is not available yet.")
