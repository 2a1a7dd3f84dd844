"""The certbot plugin ``kvault``: a DNS-01 authenticator and an installer in one class.

As an installer it stores every certificate it is given in Vault and wires
the deploy hook into the config dir, so that issuance and every renewal push
the lineage (certbot never calls an installer's ``deploy_cert`` on
``certonly`` or ``renew``; it always runs ``renewal-hooks/deploy/``).

May import: apps, renew, sync, tree, dns, store, vault (not the CLI).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Optional

from acme import challenges
from certbot import achallenges, errors, interfaces, util
from certbot.display import util as display_util
from certbot.plugins import dns_common_lexicon

from certbot_kvault._internal.dns import challenge as dns01
from certbot_kvault._internal.dns import entries as dns_entries
from certbot_kvault._internal.dns.entries import DNSError
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.sync import issued
from certbot_kvault._internal.sync.jobs import DEFAULT_WORKERS, Report
from certbot_kvault._internal.sync.push import push
from certbot_kvault._internal.tree import pending
from certbot_kvault._internal.tree.storage import Dirs, Tree
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultError
from certbot_kvault._internal.vault.settings import SETTING_OPTIONS, VaultSettings

logger = logging.getLogger(__name__)


class VaultUnusable(errors.Error):
    """Vault cannot be used and kvault was asked for by name: abort the certbot run."""


class DnsCheckFailed(errors.Error):
    """--kvault-dns-check failed: abort the certbot run before any order."""


class Authenticator(dns_common_lexicon.LexiconDNSAuthenticator, interfaces.Installer):
    """kvault: certbot state and DNS credentials in Vault / OpenBao."""

    description = ("Obtain certificates with DNS-01 through any dns-lexicon provider whose "
                   "credentials are in Vault, and store every certificate in Vault.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._vault: Optional[VaultClient] = None
        self._pushed: set[str] = set()
        self._before: dict[str, tuple[Optional[int], int]] = {}
        self._exit_push_registered = False
        self._entries: Optional[dns_entries.EntrySet] = None
        self._dns_lookup: Optional[dns01.Lookup] = None
        self._txt: Optional[dns01.TxtRun] = None

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None],
                             default_propagation_seconds: int = 0) -> None:
        # Not the base class's: there it is *the* wait; here the active check
        # is the wait and this is only an optional extra.
        add("propagation-seconds", type=int, default=default_propagation_seconds,
            metavar="SECONDS", help="Extra fixed wait after every DNS server answers the TXT "
                                    "records (for CAs behind slow secondaries; default 0).")
        add("dns", metavar="NAME", default=None,
            help="DNS credentials to use: the Vault entry <mount>/<prefix>/dns/NAME, for the "
                 "names no entry claims with its zones (default: the only entry, if there "
                 "is exactly one).")
        add("propagation-timeout", type=int, default=120, metavar="SECONDS",
            help="How long to wait for every authoritative server to answer the TXT record.")
        add("dns-resolver", metavar="HOST[:PORT]", default=None,
            help="Ask this DNS server for propagation (and CNAMEs) instead of the zone's "
                 "authoritative servers.")
        add("dns-alias", metavar="NAME=TARGET[,...]", default=None,
            help="Alias mode without looking up the CNAME: NAME's TXT record goes to TARGET "
                 "(what _acme-challenge.NAME is, or will be, a CNAME to). Without it, "
                 "_acme-challenge CNAMEs are followed.")
        add("dns-check", action="store_true", default=False,
            help="Before ordering, create, see answered and delete a test TXT record for "
                 "every name (`certbot-kvault dns check`), so bad credentials never reach "
                 "the CA.")
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
        return VaultSettings.from_env(
            flags={field: f"--kvault-{option}" for option, field in SETTING_OPTIONS.items()},
            **overrides)

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

    def _chosen(self) -> bool:
        """Did the user (or the lineage's renewal conf, on renew) name kvault for this run?"""
        # certbot prepares every plugin for `certbot plugins --prepare` and for
        # its interactive menu; only these names say kvault was asked for.
        # `certbot renew` restores authenticator/installer from the renewal conf
        # before it prepares the plugins.
        return self.name in (getattr(self.config, "authenticator", None),
                             getattr(self.config, "installer", None),
                             getattr(self.config, "configurator", None))

    def _wire(self) -> None:
        """Install the deploy hook and register the one exit push."""
        tree = self._tree()
        hook = tree.install_hook()
        logger.debug("kvault deploy hook at %s", hook)
        if not self._exit_push_registered:
            self._exit_push_registered = True
            self._before = tree.fingerprints()
            # certbot < 5.3 runs renewal-hooks/deploy only on renewals, not on a
            # new certonly issuance, and --no-directory-hooks turns it off: the
            # exit handler pushes whatever this run changed (nothing twice: a
            # lineage the hook pushed reads back unchanged).
            util.atexit_register(self._push_changed_at_exit)

    def prepare(self) -> None:
        """When kvault is chosen: wire the deploy hook, then fail before any ACME order if
        Vault is unusable. Otherwise nothing: no disk, no Vault.

        A hook wired for a run that did not choose kvault would run after every
        renewal of every lineage on the machine, fail without Vault and leave
        pending marks. When chosen, the hook goes in first: certbot drops an
        installer whose prepare() fails and still issues on ``certonly``, and
        then the hook is what reports loudly and leaves the pending mark.
        """
        if not self._chosen():
            return
        self._wire()
        try:
            self.vault.login()
            _ = self.vault.kv_version
        except VaultError as e:
            # Stop before ordering anything. certbot would quietly drop a
            # plugin whose prepare() raises a PluginError and issue a
            # certificate that never reaches Vault.
            raise VaultUnusable(f"kvault: {e}") from None
        if getattr(self.config, "authenticator", None) == self.name:
            # A wrong or missing dns/NAME is reported before the ACME order.
            try:
                self._setup_credentials()
            except errors.PluginError as e:
                raise VaultUnusable(str(e)) from None
            if self.conf("dns-check"):
                self._dns_check()

    # ---- Installer ---------------------------------------------------------------

    def get_all_names(self) -> Iterable[str]:
        return []

    def deploy_cert(self, domain: str, cert_path: str, key_path: str, chain_path: str,
                    fullchain_path: str) -> None:
        """Push the lineage holding ``cert_path`` (once, though certbot calls per domain)."""
        if not self._exit_push_registered:
            self._wire()  # chosen from certbot's menu, after prepare() ran
        tree = self._tree()
        live = os.path.dirname(os.path.abspath(cert_path))
        name = tree.lineage_for_live_path(live)
        if name not in self._pushed:
            self._push(tree, [name])

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
        """Push what this certbot run changed (certbot calls this after issuance)."""
        self._push_changed()

    def _push_changed(self, workers: int = DEFAULT_WORKERS) -> None:
        tree = self._tree()
        after = tree.fingerprints()
        changed = sorted(n for n, fp in after.items()
                         if self._before.get(n) != fp and n not in self._pushed)
        self._before = after
        if changed:
            self._push(tree, changed, workers)

    def _push_changed_at_exit(self) -> None:
        try:
            self._push_changed(workers=1)
        except errors.Error as e:
            # Too late to change certbot's exit code: say it as loudly as the hook.
            sys.stderr.write(pending.loud_failure(str(e)))
        finally:
            # The last use of Vault in this process: a machine login's token
            # is revoked (a token the user gave is left alone).
            if self._vault is not None:
                self._vault.close()
                self._vault = None

    def _push(self, tree: Tree, names: list[str], workers: int = DEFAULT_WORKERS) -> None:
        if pending.parent_pushes() is not None:
            return  # `certbot-kvault renew`/`run` pushes after certbot, checked against its pull
        try:
            report = push(tree, self.layout, names, workers=workers)
        except VaultError as e:
            report = Report(failed=[(f"lineage {n}", str(e)) for n in names])
        failed = [i.split(" ", 1)[1] for i, _ in report.failed if i.startswith("lineage ")]
        for name in failed:
            pending.mark(tree, name, "; ".join(e for _, e in report.failed))
        if not report.ok:
            reason = "; ".join(f"{i}: {e}" for i, e in report.failed)
            raise errors.PluginError(
                f"lineage {', '.join(failed) or names[0]} was NOT saved to Vault ({reason}). "
                f"Fix the cause, then run: certbot-kvault push --config-dir {tree.config_dir}")
        self._pushed.update(names)

    # ---- Authenticator (DNS-01 through dns-lexicon) ------------------------------------

    @property
    def _provider_name(self) -> str:
        default = self._entry_set().default
        return default.provider if default is not None else "dns-lexicon"

    def _setup_credentials(self) -> None:
        """Read the provider entries from Vault (dns/NAME, and those that name their zones);
        no INI file on disk."""
        self._entry_set()

    def _entry_set(self) -> dns_entries.EntrySet:
        if self._entries is None:
            try:
                self._entries = dns_entries.load_entries(self.layout, self.conf("dns"))
            except VaultError as e:
                raise errors.PluginError(f"kvault: cannot read the DNS provider entries: {e}") \
                    from None
            logger.debug("kvault DNS entries: default %r, by zone %r", self._entries.default,
                         self._entries.zoned)
        return self._entries

    def _lookup(self) -> dns01.Lookup:
        if self._dns_lookup is None:
            self._dns_lookup = dns01.Lookup(self.conf("dns-resolver"))
        return self._dns_lookup

    def _perform(self, domain: str, validation_name: str, validation: str) -> None:
        raise NotImplementedError("perform() places every record at once")

    def _cleanup(self, domain: str, validation_name: str, validation: str) -> None:
        """Not used: cleanup() removes exactly what perform() created."""

    def _dns_check(self) -> None:
        """--kvault-dns-check: create, see answered and delete a throw-away TXT for every
        name, before any ACME order (so wrong credentials never cost a failed validation)."""
        domains = [str(d) for d in getattr(self.config, "domains", None) or []]
        if not domains:
            display_util.notify("kvault: --kvault-dns-check: no names given yet; not checked")
            return
        try:
            dns01.check(self._entry_set(), domains, self._lookup(),
                        dns01.parse_aliases(self.conf("dns-alias")),
                        float(self.conf("propagation-timeout")),
                        lambda line: display_util.notify(f"kvault dns check: {line}"))
        except (DNSError, errors.PluginError) as e:
            raise DnsCheckFailed(f"kvault: --kvault-dns-check failed, nothing was ordered: "
                                 f"{e}") from None

    def perform(self, achalls: list[achallenges.AnnotatedChallenge]
                ) -> list[challenges.ChallengeResponse]:
        """Create every TXT record where it must go, then wait until the DNS servers answer
        all of them."""
        if not self._exit_push_registered:
            # Chosen from certbot's interactive menu: prepare() ran before the
            # choice, so it wired nothing.
            self._wire()
        names = [(dns_entries.achall_domain(a),
                  a.validation_domain_name(dns_entries.achall_domain(a))) for a in achalls]
        run = self._txt = dns01.TxtRun(self._lookup(), self._ttl)
        try:
            # Where each record goes (aliases, entries, zones, servers to ask)
            # before touching DNS: a failure here leaves nothing to clean up.
            targets = dns01.plan(names, self._entry_set(), self._lookup(),
                                 dns01.parse_aliases(self.conf("dns-alias")))
            for target in targets:
                if target.alias:
                    logger.info("kvault alias: %s", dns01.describe(target))
            run.prepare(targets)
            self._attempt_cleanup = True
            expected: dict[str, set[str]] = {}
            for achall, target in zip(achalls, targets):
                value = achall.validation(achall.account_key)
                if value not in expected.get(target.name, set()):
                    run.create(target, value)
                expected.setdefault(target.name, set()).add(value)
            issued.note(self.config.config_dir, [
                {"domain": t.domain, "validation": t.validation, "txt": t.name, "via": t.via,
                 "zone": run.zones[t.name], "entry": t.entry.name} for t in targets])
            count = len({s.host for n in expected for s in run.servers[n]})
            display_util.notify(f"Waiting for {len(achalls)} TXT record(s) to answer on "
                                f"{count} DNS server(s)")
            waited = run.wait(expected, float(self.conf("propagation-timeout")))
        except DNSError as e:
            raise errors.PluginError(f"kvault: {e}") from None
        logger.info("DNS records answered by every server after %.2f s", waited)
        extra = self.conf("propagation-seconds") or 0
        if extra:
            display_util.notify(f"Waiting {extra} more second(s) (--kvault-propagation-seconds)")
            time.sleep(extra)
        return [achall.response(achall.account_key) for achall in achalls]

    def cleanup(self, achalls: list[achallenges.AnnotatedChallenge]) -> None:
        """Remove exactly the TXT records perform() created; what fails is logged with what
        to remove by hand."""
        if self._txt is not None:
            for line in self._txt.cleanup():
                logger.warning("kvault %s.", line)

    def auth_hint(self, failed_achalls: list[achallenges.AnnotatedChallenge]) -> str:
        return ("The Certificate Authority could not verify the DNS TXT records created by "
                "--authenticator kvault, although the DNS servers kvault asked answered them. "
                "If the CA asks other servers (split DNS, a slow secondary), add a fixed wait "
                "with --kvault-propagation-seconds, or check with --kvault-dns-resolver.")
