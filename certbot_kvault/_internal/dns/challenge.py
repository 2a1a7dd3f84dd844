"""DNS-01 of one run: where each TXT record goes, writing it, seeing it answered, removing it.

Shared by the plugin (plugin.py) and ``certbot-kvault dns check`` (cli/dns.py):

* :func:`plan` decides, before anything is written, where each validation
  name's TXT goes: the end of its CNAME chain at the zone's authoritative
  servers (alias mode), or an explicit ``--kvault-dns-alias NAME=TARGET``, and
  which provider entry hosts that name (``entries.EntrySet``). A loop, a chain too
  long and a name no entry hosts stop it there, one line each.
* :class:`ZoneWriter` is one entry's lexicon operations, every failure one line
  naming the fix (wrong credentials, a zone the account does not host, an API
  that cannot be reached).
* :class:`TxtRun` creates the records, waits until every server answers them
  (propagation.py) and removes exactly what it created.
* :func:`check` is all of it with a throw-away value, step by step with times.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from requests.exceptions import HTTPError, RequestException

from certbot_kvault._internal.dns import entries as dns_entries
from certbot_kvault._internal.dns import propagation
from certbot_kvault._internal.dns.entries import DnsEntry, DNSError, EntrySet
from certbot_kvault._internal.vault.redact import one_line

logger = logging.getLogger(__name__)

CHALLENGE_PREFIX = "_acme-challenge."
MAX_ALIASES = 100


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one certificate name's TXT record goes, and with which entry."""

    domain: str                # the certificate's name (``*.example.com`` too)
    validation: str            # ``_acme-challenge.<name>``, where the CA looks
    name: str                  # where the TXT goes: ``validation`` or an alias target
    entry: DnsEntry
    via: str = ""              # "CNAME", "--kvault-dns-alias" or "" (no alias)
    unasked: Optional[str] = None  # why the (rest of the) CNAME chain could not be asked

    @property
    def alias(self) -> Optional[str]:
        return self.name if self.name != self.validation else None


def validation_name(domain: str) -> str:
    """certbot's validation name: a wildcard shares its base name's."""
    base = domain[2:] if domain.startswith("*.") else domain
    return CHALLENGE_PREFIX + base.rstrip(".").lower()


def parse_aliases(text: Optional[str]) -> dict[str, str]:
    """``--kvault-dns-alias NAME=TARGET[,NAME=TARGET...]``: certificate name -> TXT name."""
    out: dict[str, str] = {}
    for item in (text or "").replace(" ", ",").split(","):
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep:
            raise DNSError(f"--kvault-dns-alias: expected NAME=TARGET, got {item[:80]!r}.")
        name = name.strip()
        base = name[2:] if name.startswith("*.") else name
        out[validation_name(dns_entries.dns_name(base, "--kvault-dns-alias NAME"))] = \
            dns_entries.dns_name(target, "--kvault-dns-alias TARGET")
    if len(out) > MAX_ALIASES:
        raise DNSError(f"--kvault-dns-alias: at most {MAX_ALIASES} aliases.")
    return out


class Lookup:
    """Which DNS servers to ask about a name: its zone's authoritative servers, or the one
    ``--kvault-dns-resolver`` names (asked with recursion, as it may be a resolver)."""

    def __init__(self, resolver: Optional[str] = None) -> None:
        self.override = propagation.parse_server(resolver) if resolver else None
        self.recursion = self.override is not None
        self._resolver: Any = None
        self._found: dict[str, list[propagation.NameServer]] = {}

    def servers(self, name: str) -> list[propagation.NameServer]:
        if self.override is not None:
            return [self.override]
        if name not in self._found:
            if self._resolver is None:
                self._resolver = propagation.make_resolver()
            zone, found = propagation.find_authoritative(name, self._resolver)
            logger.info("Authoritative servers of %s (zone %s): %s", name, zone,
                        ", ".join(str(s) for s in found))
            self._found[name] = found
        return self._found[name]


def plan(names: Sequence[tuple[str, str]], entries: EntrySet, lookup: Lookup,
         aliases: Mapping[str, str]) -> list[Target]:
    """One :class:`Target` per (certificate name, validation name), nothing written yet."""
    out: list[Target] = []
    done: dict[str, Target] = {}
    for domain, validation in names:
        validation = validation.rstrip(".").lower()
        if validation in done:  # a wildcard and its base name: one lookup
            out.append(dataclasses.replace(done[validation], domain=domain))
            continue
        unasked = None
        if validation in aliases:
            # Given because the CNAME cannot be looked up yet: not looked up.
            name, via = aliases[validation], "--kvault-dns-alias"
        else:
            chain, unasked = propagation.follow_cnames(validation, lookup.servers,
                                                       lookup.recursion)
            name, via = chain[-1], ("CNAME" if len(chain) > 1 else "")
            if unasked:
                logger.info("CNAME lookup stopped at %s: %s", name, unasked)
        target = Target(domain, validation, name, entries.for_name(name), via, unasked)
        done[validation] = target
        out.append(target)
    return out


class ZoneWriter:
    """One provider entry's lexicon operations on TXT records."""

    def __init__(self, entry: DnsEntry, ttl: int = 60) -> None:
        self.entry = entry
        self.ttl = ttl
        self._zones: dict[str, str] = {}

    def _fix(self) -> str:
        return (f"check {self.entry.where} (fix it with `certbot-kvault dns add "
                f"{self.entry.name} --provider {self.entry.provider} --option KEY=VALUE ... "
                "--force`)")

    def _failure(self, e: Exception, zone: str) -> Optional[DNSError]:
        """The one line for a provider error; None: not this zone (try the next guess)."""
        provider = self.entry.provider
        if isinstance(e, HTTPError):
            status = e.response.status_code if e.response is not None else None
            if status in ({404, 422} if provider == "powerdns" else {404}):
                return None
            if status in (401, 403):
                return DNSError(f"the {provider} API refused the credentials of "
                                f"{self.entry.where} (HTTP {status}): wrong API "
                                f"key/credentials; {self._fix()}.")
            return DNSError(f"the {provider} API failed for zone {zone} (HTTP {status}): "
                            f"{one_line(e)}; {self._fix()}.")
        if str(e).startswith("No domain found"):
            return None
        if isinstance(e, RequestException):
            return DNSError(f"cannot reach the {provider} API ({one_line(e)}); {self._fix()}.")
        return DNSError(f"{provider} failed for zone {zone}: {one_line(e)}; {self._fix()}.")

    def _client(self, zone: str) -> Any:
        from lexicon.client import Client  # with the first DNS operation: lexicon is heavy

        return Client(dns_entries.lexicon_config(self.entry, zone, self.ttl))

    def zone_for(self, name: str) -> str:
        """The provider's zone holding ``name``: the longest guess the account hosts, never
        above the zone the entry claims for it."""
        if name in self._zones:
            return self._zones[name]
        from certbot.plugins.dns_common import base_domain_name_guesses

        claimed = self.entry.zone_claiming(name)
        guesses = [g for g in base_domain_name_guesses(name)
                   if claimed is None or dns_entries.in_zone(g, claimed)]
        for guess in guesses:
            try:
                with dns_entries.quiet_tldextract(), self._client(guess):
                    self._zones[name] = guess
                    return guess
            except Exception as e:  # noqa: BLE001 - lexicon raises anything; sorted below
                failure = self._failure(e, guess)
                if failure is not None:
                    raise failure from None
        raise DNSError(f"the {self.entry.provider} account of {self.entry.where} hosts no "
                       f"zone for {name} (tried {', '.join(guesses)}). Check the domain name, "
                       "or choose the entry whose provider hosts it with --kvault-dns NAME or "
                       "the entries' --zone.")

    def create(self, zone: str, name: str, value: str) -> None:
        """Add one TXT value, next to others at the same name, never replacing them."""
        self._op("create_record", zone, name, value)

    def delete(self, zone: str, name: str, value: str) -> None:
        self._op("delete_record", zone, name, value)

    def _op(self, op: str, zone: str, name: str, value: str) -> None:
        try:
            with dns_entries.quiet_tldextract(), self._client(zone) as operations:
                getattr(operations, op)(rtype="TXT", name=name, content=value)
        except Exception as e:  # noqa: BLE001 - as in zone_for
            what = "add" if op == "create_record" else "remove"
            failure = self._failure(e, zone) or DNSError(f"cannot {what} the TXT record {name}: "
                                                         f"{one_line(e)}; {self._fix()}.")
            raise failure from None


class TxtRun:
    """The TXT records of one run: each created once, waited for, and removed again."""

    def __init__(self, lookup: Lookup, ttl: int = 60) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self._writers: dict[str, ZoneWriter] = {}
        self.zones: dict[str, str] = {}  # TXT name -> provider zone
        self.servers: dict[str, list[propagation.NameServer]] = {}
        self.created: list[tuple[DnsEntry, str, str, str]] = []  # entry, zone, name, value

    def writer(self, entry: DnsEntry) -> ZoneWriter:
        if entry.name not in self._writers:
            self._writers[entry.name] = ZoneWriter(entry, self.ttl)
        return self._writers[entry.name]

    def prepare(self, targets: Sequence[Target]) -> None:
        """Every zone and every server to ask, before anything is written."""
        for t in targets:
            if t.name not in self.zones:
                self.servers[t.name] = self.lookup.servers(t.name)
                self.zones[t.name] = self.writer(t.entry).zone_for(t.name)

    def create(self, target: Target, value: str) -> None:
        zone = self.zones[target.name]
        self.writer(target.entry).create(zone, target.name, value)
        self.created.append((target.entry, zone, target.name, value))

    def wait(self, expected: Mapping[str, set[str]], timeout: float) -> float:
        """Seconds until every server of every TXT name answers all its values."""
        return propagation.wait_for_txt(expected, {n: self.servers[n] for n in expected},
                                        timeout, self.lookup.recursion)

    def cleanup(self) -> list[str]:
        """Remove everything created; what could not be removed, one line each."""
        failed = []
        for entry, zone, name, value in list(self.created):
            try:
                self.writer(entry).delete(zone, name, value)
                self.created.remove((entry, zone, name, value))
            except DNSError as e:
                failed.append(f"could not remove the TXT record {name} ({value}) from zone "
                              f"{zone} with {entry.where}: {e}; remove it by hand")
        return failed


def describe(target: Target) -> str:
    """One line: where a name's TXT goes and why."""
    text = (f"{target.validation} -> {target.name} ({target.via})" if target.alias
            else f"{target.validation} (no alias)")
    return f"{text}; {target.unasked}" if target.unasked else text


def check(entries: EntrySet, domains: Sequence[str], lookup: Lookup,
          aliases: Mapping[str, str], timeout: float, say: Callable[[str], None]) -> float:
    """Create a throw-away TXT where each domain's DNS-01 record would go, wait until every
    server answers it, delete it; one line per step with its time. Seconds in all.

    Raises DNSError (after removing what it created) at the first failure.
    """
    start = time.monotonic()

    def step(text: str, since: float) -> float:
        now = time.monotonic()
        say(f"{text} ({now - since:.2f} s)")
        return now

    t = start
    targets = plan([(d, validation_name(d)) for d in domains], entries, lookup, aliases)
    for target in {x.validation: x for x in targets}.values():
        t = step(f"alias: {describe(target)}", t)
    run = TxtRun(lookup)
    run.prepare(targets)
    for name, zone in run.zones.items():
        entry = next(x.entry for x in targets if x.name == name)
        t = step(f"zone: {name} is in zone {zone} of {entry.where} ({entry.provider})", t)
    value = f"certbot-kvault-check-{secrets.token_urlsafe(12)}"
    expected: dict[str, set[str]] = {}

    def remove() -> list[str]:
        nonlocal t
        failed = run.cleanup()
        if expected and not failed:
            t = step(f"deleted: TXT {', '.join(expected)}", t)
        return failed

    try:
        for target in {x.name: x for x in targets}.values():
            run.create(target, value)
            expected[target.name] = {value}
            t = step(f"created: TXT {target.name} with {target.entry.where}", t)
        run.wait(expected, timeout)
        count = len({s.host for n in expected for s in run.servers[n]})
        names = ", ".join(sorted({s.host for n in expected for s in run.servers[n]}))
        t = step(f"answered: by all {count} DNS server(s) asked ({names})", t)
    except DNSError as e:
        failed = remove()
        raise DNSError("; ".join([str(e), *failed])) from None
    except BaseException:
        remove()
        raise
    failed = remove()
    if failed:
        raise DNSError("; ".join(failed))
    return time.monotonic() - start
