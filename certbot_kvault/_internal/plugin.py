"""The certbot plugin ``kvault``: a DNS-01 authenticator and an installer in one class.

As an installer it stores every certificate it is given in Vault and wires
the deploy hook into the config dir, so that issuance and every renewal push
the lineage (certbot never calls an installer's ``deploy_cert`` on
``certonly`` or ``renew``; it always runs ``renewal-hooks/deploy/``).
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
from certbot.plugins import dns_common, dns_common_lexicon
from lexicon.client import Client
from requests.exceptions import HTTPError, RequestException

from certbot_kvault._internal import dns as kvault_dns
from certbot_kvault._internal import pending, propagation, sync
from certbot_kvault._internal.errors import VaultError
from certbot_kvault._internal.executables import kvault_bin
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.redact import one_line as _one_line
from certbot_kvault._internal.settings import SETTING_OPTIONS, VaultSettings
from certbot_kvault._internal.tree import Dirs, Tree
from certbot_kvault._internal.vault import VaultClient

logger = logging.getLogger(__name__)


class VaultUnusable(errors.Error):
    """Vault cannot be used and kvault was asked for by name: abort the certbot run."""


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
        self._dns = kvault_dns.DnsRun()

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None],
                             default_propagation_seconds: int = 0) -> None:
        # Not the base class's: there it is *the* wait; here the active check
        # is the wait and this is only an optional extra.
        add("propagation-seconds", type=int, default=default_propagation_seconds,
            metavar="SECONDS", help="Extra fixed wait after every DNS server answers the TXT "
                                    "records (for CAs behind slow secondaries; default 0).")
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
        hook = tree.install_hook(kvault_bin())
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

    def _push_changed(self, workers: int = sync.DEFAULT_WORKERS) -> None:
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

    def _push(self, tree: Tree, names: list[str], workers: int = sync.DEFAULT_WORKERS) -> None:
        if pending.parent_pushes() is not None:
            return  # `certbot-kvault renew`/`run` pushes after certbot, checked against its pull
        try:
            report = sync.push(tree, self.layout, names, workers=workers)
        except VaultError as e:
            report = sync.Report(failed=[(f"lineage {n}", str(e)) for n in names])
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
    def _entry(self) -> kvault_dns.DnsEntry:
        self._setup_credentials()
        assert self._dns.entry is not None
        return self._dns.entry

    @property
    def _provider_name(self) -> str:
        return self._entry.provider

    def _setup_credentials(self) -> None:
        """Read dns/NAME (or the only dns/ entry) from Vault; no INI file on disk."""
        if self._dns.entry is not None:
            return
        try:
            self._dns.entry = kvault_dns.load_entry(self.layout, self.conf("dns"))
        except VaultError as e:
            raise errors.PluginError(f"kvault: cannot read the DNS provider entry: {e}") \
                from None
        logger.debug("kvault DNS entry %r", self._dns.entry)

    def _build_lexicon_config(self, domain: str) -> Any:
        return kvault_dns.lexicon_config(self._entry, domain, self._ttl)

    def _fix(self) -> str:
        return (f"check {self._entry.where} (fix it with `certbot-kvault dns add "
                f"{self._entry.name} --provider {self._entry.provider} --option KEY=VALUE ... "
                "--force`)")

    def _handle_http_error(self, e: HTTPError, domain_name: str) -> Optional[errors.PluginError]:
        status = e.response.status_code if e.response is not None else None
        wrong_guess = {404, 422} if self._provider_name == "powerdns" else {404}
        if status in wrong_guess:
            return None  # not this zone: let the next, shorter guess be tried
        if status in (401, 403):
            return kvault_dns.detached(errors.PluginError(
                f"kvault: the {self._provider_name} API refused the credentials (HTTP {status}):"
                f" wrong API key/credentials; {self._fix()}."))
        return kvault_dns.detached(errors.PluginError(
            f"kvault: the {self._provider_name} API failed for zone {domain_name} "
            f"(HTTP {status}): {_one_line(e)}; {self._fix()}."))

    def _handle_general_error(self, e: Exception,
                              domain_name: str) -> Optional[errors.PluginError]:
        if str(e).startswith("No domain found"):
            return None
        if isinstance(e, RequestException):
            return kvault_dns.detached(errors.PluginError(
                f"kvault: cannot reach the {self._provider_name} API ({_one_line(e)}); "
                f"{self._fix()}."))
        return kvault_dns.detached(errors.PluginError(
            f"kvault: {self._provider_name} failed for zone {domain_name}: {_one_line(e)}; "
            f"{self._fix()}."))

    def _resolve_domain(self, domain: str) -> str:
        """The provider's zone for ``domain`` (longest guess first), cached per run."""
        zones = self._dns.zones
        if domain in zones:
            return zones[domain]
        guesses = dns_common.base_domain_name_guesses(domain)
        try:
            with kvault_dns.quiet_tldextract():
                zone = super()._resolve_domain(domain)
        except errors.PluginError as e:
            if not str(e).startswith("Unable to determine zone identifier"):
                raise
            raise errors.PluginError(
                f"kvault: the {self._provider_name} account of {self._entry.where} hosts no "
                f"zone for {domain} "
                f"(tried {', '.join(guesses)}). Check the domain name, or choose the entry "
                "whose provider hosts it with --kvault-dns NAME.") from None
        zones[domain] = zone
        return zone

    def _perform(self, domain: str, validation_name: str, validation: str) -> None:
        """Add one TXT value (added next to others at the same name, never replacing them)."""
        zone = self._resolve_domain(domain)
        try:
            with kvault_dns.quiet_tldextract(), \
                    Client(self._build_lexicon_config(zone)) as operations:
                operations.create_record(rtype="TXT", name=validation_name, content=validation)
        except HTTPError as e:
            raise self._handle_http_error(e, zone) or errors.PluginError(
                f"kvault: cannot add the TXT record {validation_name}: {_one_line(e)}") from None
        except RequestException as e:
            raise errors.PluginError(
                f"kvault: cannot add the TXT record {validation_name} ({_one_line(e)}); "
                f"{self._fix()}.") from None
        self._dns.created.append((zone, validation_name, validation))

    def _cleanup(self, domain: str, validation_name: str, validation: str) -> None:
        """Remove one TXT value we added; failures are logged with what to remove by hand."""
        zone = self._dns.zones.get(domain)
        created = self._dns.created
        if zone is None or (zone, validation_name, validation) not in created:
            return  # never created (perform failed before it): nothing to remove
        try:
            with kvault_dns.quiet_tldextract(), \
                    Client(self._build_lexicon_config(zone)) as operations:
                operations.delete_record(rtype="TXT", name=validation_name, content=validation)
            created.remove((zone, validation_name, validation))
        except Exception as e:  # noqa: BLE001 - cleanup must not hide the run's outcome
            logger.warning("kvault could not remove the TXT record %s (%s) from zone %s: %s; "
                           "remove it by hand.", validation_name, validation, zone,
                           _one_line(e))

    def _propagation_servers(self, names: list[str]
                             ) -> tuple[dict[str, list[propagation.NameServer]], bool]:
        """Where to check each validation name: the override resolver, else the zone's NS."""
        override = self.conf("dns-resolver")
        if override:
            server = propagation.parse_server(override)
            return {n: [server] for n in names}, True
        resolver = propagation.make_resolver()
        found: dict[str, list[propagation.NameServer]] = {}
        for n in names:
            zone, servers = propagation.find_authoritative(n, resolver)
            logger.info("Authoritative servers of %s (zone %s): %s", n, zone,
                        ", ".join(str(s) for s in servers))
            found[n] = servers
        return found, False

    def perform(self, achalls: list[achallenges.AnnotatedChallenge]
                ) -> list[challenges.ChallengeResponse]:
        """Create every TXT record, then wait until the DNS servers answer all of them."""
        if not self._exit_push_registered:
            # Chosen from certbot's interactive menu: prepare() ran before the
            # choice, so it wired nothing.
            self._wire()
        self._setup_credentials()
        expected: dict[str, set[str]] = {}
        work = []
        for achall in achalls:
            domain = kvault_dns.achall_domain(achall)
            name = achall.validation_domain_name(domain)
            value = achall.validation(achall.account_key)
            expected.setdefault(name, set()).add(value)
            work.append((domain, name, value))
        # Find the servers (and the zones) before touching DNS: a failure here
        # leaves nothing to clean up.
        servers, recursion = self._propagation_servers(sorted(expected))
        for domain, _name, _value in work:
            self._resolve_domain(domain)
        self._attempt_cleanup = True
        for domain, name, value in work:
            self._perform(domain, name, value)
        count = len({s.host for group in servers.values() for s in group})
        display_util.notify(f"Waiting for {len(work)} TXT record(s) to answer on {count} "
                            "DNS server(s)")
        waited = propagation.wait_for_txt(expected, servers,
                                          float(self.conf("propagation-timeout")), recursion)
        logger.info("DNS records answered by every server after %.2f s", waited)
        extra = self.conf("propagation-seconds") or 0
        if extra:
            display_util.notify(f"Waiting {extra} more second(s) (--kvault-propagation-seconds)")
            time.sleep(extra)
        return [achall.response(achall.account_key) for achall in achalls]

    def auth_hint(self, failed_achalls: list[achallenges.AnnotatedChallenge]) -> str:
        return ("The Certificate Authority could not verify the DNS TXT records created by "
                "--authenticator kvault, although the DNS servers kvault asked answered them. "
                "If the CA asks other servers (split DNS, a slow secondary), add a fixed wait "
                "with --kvault-propagation-seconds, or check with --kvault-dns-resolver.")
