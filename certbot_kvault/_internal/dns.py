"""DNS-01 for the ``kvault`` authenticator: provider entries from Vault, lexicon, propagation.

Two halves, both free of certbot's plugin machinery so they can be tested alone:

* **Provider entries.** ``<mount>/<prefix>/dns/<name>`` holds ``provider`` (a
  dns-lexicon provider name) and that provider's options (for PowerDNS:
  ``auth_token``, ``pdns_server``, ``pdns_server_id``). :func:`load_entry`
  reads one (or the only one), :func:`check_provider` / :func:`check_options`
  refuse names lexicon does not know, and :func:`lexicon_config` turns an
  entry into the ``ConfigResolver`` a lexicon ``Client`` takes.
* **Active propagation check.** :func:`find_authoritative` walks up from the
  validation name to the zone (SOA) and resolves the zone's NS hosts to
  addresses; :func:`wait_for_txt` then asks every one of them *directly*
  until each answers every expected TXT value, with short growing intervals,
  bounded by a timeout. ``--kvault-dns-resolver`` replaces the discovered
  servers with one server of the user's choosing.

lexicon runs tldextract on every ``Client``; its answer does not matter here
(the authenticator always names the zone through ``delegated``), so
:func:`quiet_tldextract` keeps it off the network and its offline traceback
out of the user's terminal.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import importlib.metadata
import ipaddress
import logging
import os
import socket
import time
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, NoReturn, Optional, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
from certbot import errors

from certbot_kvault._internal.layout import Layout, validate_name

logger = logging.getLogger(__name__)

PROVIDER_FIELD = "provider"

# The one private module of dns-lexicon certbot-kvault uses (see _lexicon_discovery).
LEXICON_DISCOVERY = "lexicon._private.discovery"

# Poll schedule of the propagation check: the next query comes after a quarter
# of the time waited so far, at least MIN and at most MAX seconds apart. A
# record that appears after t seconds is seen by about 1.25 t (+ MIN).
POLL_MIN_INTERVAL = 0.2
POLL_MAX_INTERVAL = 2.0
QUERY_TIMEOUT = 2.0


class DNSError(errors.PluginError):
    """A DNS-01 problem; the message is one line naming the fix."""


class PropagationTimeout(DNSError):
    """Some server did not answer the expected TXT values in time."""


# --------------------------------------------------------------------------- providers


def _lexicon_discovery() -> ModuleType:
    """lexicon's provider discovery: ``find_providers()`` and ``load_provider_module(name)``.

    dns-lexicon has no public API for it (3.14 to 3.25 have it only in
    ``lexicon._private.discovery``; the ``lexicon.discovery`` alias warns that it
    goes in lexicon 4), so this is the one place that reaches into lexicon's
    private modules, and tests/test_dns.py fails loudly when lexicon moves it.
    """
    try:
        module = importlib.import_module(LEXICON_DISCOVERY)
    except ImportError:
        module = None
    if module is None or not all(hasattr(module, f)
                                 for f in ("find_providers", "load_provider_module")):
        raise DNSError(f"dns-lexicon {_lexicon_version()} has no {LEXICON_DISCOVERY}."
                       "find_providers/load_provider_module, which certbot-kvault uses to list "
                       "its DNS providers: install dns-lexicon 3.14 to 3.25 (the versions "
                       "certbot-kvault is tested with).")
    return module


def _lexicon_version() -> str:
    try:
        return importlib.metadata.version("dns-lexicon")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def available_providers() -> dict[str, bool]:
    """Lexicon's providers: name -> whether its extra dependencies are installed."""
    return dict(_lexicon_discovery().find_providers())


def check_provider(provider: str, where: str, entry_name: str = "NAME") -> None:
    """Refuse a provider name lexicon does not know or cannot load."""
    providers = available_providers()
    if provider in providers and providers[provider]:
        return
    if provider in providers:
        raise DNSError(f"DNS provider {provider!r} ({where}) needs extra packages: run "
                       f"`pip install 'dns-lexicon[{provider}]'` where certbot runs.")
    close = difflib.get_close_matches(provider, list(providers), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise DNSError(f"Unknown DNS provider {provider!r} ({where}): it must be a dns-lexicon "
                   f"provider name, e.g. powerdns, cloudflare, route53.{hint} Fix it with "
                   f"`certbot-kvault dns add {entry_name} --provider PROVIDER --option "
                   "KEY=VALUE ... --force`.")


class _OptionsParser(argparse.ArgumentParser):
    """A provider's CLI parser that fails by raising, never by exiting the process."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def provider_option_names(provider: str) -> Optional[list[str]]:
    """The options the provider's own CLI parser declares, or None if it cannot be loaded."""
    try:
        module = _lexicon_discovery().load_provider_module(provider)
        parser = _OptionsParser(add_help=False)
        module.Provider.configure_parser(parser)
        # Parsing no arguments sets every declared option to its default: the
        # namespace names them all, through argparse's public API.
        declared = vars(parser.parse_known_args([])[0])
    except Exception:  # noqa: BLE001 - an unloadable provider just skips this check
        logger.debug("cannot list the options of lexicon provider %s", provider, exc_info=True)
        return None
    return sorted(dest for dest in declared if dest != "help")


def normalize_key(key: str) -> str:
    return key.strip().replace("-", "_")


def check_options(provider: str, options: Mapping[str, Any], where: str) -> None:
    """Refuse option keys the provider does not declare (typos would fail much later)."""
    known = provider_option_names(provider)
    if known is None:
        return
    unknown = sorted(k for k in options if normalize_key(k) not in known)
    if unknown:
        raise DNSError(f"DNS provider {provider} ({where}) has no option "
                       f"{', '.join(unknown)}; its options are: {', '.join(known) or 'none'}.")


@dataclasses.dataclass(frozen=True)
class DnsEntry:
    """One ``dns/<name>`` record: the provider and its options (secrets; never print them)."""

    name: str
    provider: str
    options: Mapping[str, str]
    where: str

    def __repr__(self) -> str:  # options hold secrets: never let them reach a log
        return (f"DnsEntry(name={self.name!r}, provider={self.provider!r}, "
                f"options={sorted(self.options)!r})")

    @classmethod
    def from_record(cls, name: str, data: Mapping[str, Any], where: str) -> DnsEntry:
        provider = data.get(PROVIDER_FIELD)
        if not isinstance(provider, str) or not provider.strip():
            raise DNSError(f"{where} has no '{PROVIDER_FIELD}' field; store one with "
                           f"`certbot-kvault dns add {name} --provider PROVIDER "
                           "--option KEY=VALUE ... --force`.")
        options = {normalize_key(k): "" if v is None else str(v)
                   for k, v in data.items() if k != PROVIDER_FIELD}
        return cls(name=name, provider=provider.strip(), options=options, where=where)

    def check(self) -> None:
        check_provider(self.provider, self.where, self.name)


def entry_where(layout: Layout, name: str) -> str:
    return layout.where("dns", name)


def load_entry(layout: Layout, name: Optional[str]) -> DnsEntry:
    """``dns/<name>``, or the only entry when ``name`` is None; checked against lexicon."""
    if not name:
        names = layout.list_dns()
        if len(names) != 1:
            where = layout.where("dns")
            if not names:
                raise DNSError(f"No DNS provider entry in Vault ({where}/); create one with "
                               "`certbot-kvault dns add NAME --provider PROVIDER --option "
                               "KEY=VALUE ...`.")
            raise DNSError(f"Several DNS provider entries in Vault ({where}/: "
                           f"{', '.join(names)}); choose one with --kvault-dns NAME.")
        name = names[0]
        logger.info("Using the only DNS provider entry, %s", layout.where("dns", name))
    validate_name(name, "DNS entry")
    where = entry_where(layout, name)
    data = layout.load_dns(name)
    if data is None:
        known = layout.list_dns()
        listing = f" (entries: {', '.join(known)})" if known else ""
        raise DNSError(f"No DNS provider entry {where} in Vault{listing}; create it with "
                       f"`certbot-kvault dns add {name} --provider PROVIDER --option "
                       "KEY=VALUE ...` or pick another with --kvault-dns.")
    entry = DnsEntry.from_record(name, data, where)
    entry.check()
    return entry


def lexicon_config(entry: DnsEntry, domain: str, ttl: int) -> Any:
    """The lexicon ``ConfigResolver`` for ``entry`` operating on zone ``domain``.

    ``delegated`` = ``domain`` makes lexicon use exactly this zone (certbot
    guesses zones from the longest name down). Every option is also given
    with dashes, as a few providers look theirs up that way.
    """
    from lexicon.config import ConfigResolver

    options: dict[str, str] = {}
    for key, value in entry.options.items():
        options[key] = value
        options.setdefault(key.replace("_", "-"), value)
    config = {
        "domain": domain,
        "delegated": domain,
        "provider_name": entry.provider,
        "ttl": ttl,
        entry.provider: options,
    }
    # No with_env(): the Vault entry is the whole configuration, so a stray
    # LEXICON_* variable of the machine cannot change which account is used.
    return ConfigResolver().with_dict(config)  # type: ignore[no-untyped-call]


class _TldextractFilter(logging.Filter):
    """Demote tldextract's warnings (offline PSL fetch, unwritable cache) to debug, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.levelno < logging.CRITICAL:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
        return True


_TLD_FILTER = _TldextractFilter()
_TLD_URLS_ENV = "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"


@contextlib.contextmanager
def quiet_tldextract() -> Iterator[None]:
    """Run lexicon calls without a Public Suffix List download or its offline traceback.

    tldextract >= 5.2 reads ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS``: empty means
    "use the bundled snapshot". A user who sets it keeps their value. Older
    tldextract still fetches; the log filter then keeps a failure to one debug line.
    """
    tld_logger = logging.getLogger("tldextract")
    tld_logger.addFilter(_TLD_FILTER)
    had_env = _TLD_URLS_ENV in os.environ
    if not had_env:
        os.environ[_TLD_URLS_ENV] = ""
    try:
        yield
    finally:
        if not had_env:
            os.environ.pop(_TLD_URLS_ENV, None)
        tld_logger.removeFilter(_TLD_FILTER)


# --------------------------------------------------------------------------- DNS servers


@dataclasses.dataclass(frozen=True)
class NameServer:
    """One address to ask: ``host`` is the NS name (or what the user typed)."""

    host: str
    address: str
    port: int = 53

    def __str__(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        label = f"{addr}:{self.port}"
        return label if self.host in (self.address, addr) else f"{self.host} ({label})"


def parse_server(spec: str) -> NameServer:
    """``HOST[:PORT]`` (IPv6 as ``[ADDR]:PORT`` or bare) -> a NameServer; HOST may be a name."""
    text = spec.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        port = int(port_text) if port_text else 53
        if not 0 < port < 65536 or not host:
            raise ValueError
    except ValueError:
        raise DNSError(f"--kvault-dns-resolver {spec!r} is not HOST[:PORT] (e.g. 192.0.2.53, "
                       "ns1.example.net:5353 or [2001:db8::53]:53).") from None
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        try:
            address = str(socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)[0][4][0])
        except (OSError, IndexError):
            raise DNSError(f"--kvault-dns-resolver: cannot resolve the host name {host!r}; "
                           "give an IP address.") from None
    return NameServer(host=host, address=address, port=port)


def make_resolver(server: Optional[NameServer] = None,
                  lifetime: float = 10.0) -> dns.resolver.Resolver:
    """The resolver used to *find* the authoritative servers (system's, or ``server``)."""
    if server is None:
        try:
            resolver = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise DNSError("No system DNS resolver is configured (/etc/resolv.conf); pass "
                           "--kvault-dns-resolver HOST[:PORT] to name the server to ask.") \
                from None
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server.address]
        resolver.port = server.port
    resolver.lifetime = lifetime
    resolver.timeout = min(QUERY_TIMEOUT, lifetime)
    resolver.cache = None
    return resolver


def find_authoritative(name: str, resolver: Optional[dns.resolver.Resolver] = None,
                       port: int = 53) -> tuple[str, list[NameServer]]:
    """The zone holding ``name`` and its authoritative servers' addresses.

    Walks up from ``name`` with SOA queries (NXDOMAIN/NODATA answers name the
    zone in their authority section), then resolves the zone's NS hosts to
    IPv4 and IPv6 addresses through the same resolver. ``port`` is the port
    the authoritative servers listen on (53 but in tests).
    """
    resolver = resolver or make_resolver()
    qname = dns.name.from_text(name)
    try:
        zone = dns.resolver.zone_for_name(qname, resolver=resolver, lifetime=resolver.lifetime)
        ns_answer = resolver.resolve(zone, dns.rdatatype.NS)
    except dns.exception.DNSException as e:
        raise DNSError(f"Cannot find the authoritative DNS servers of {name} ({_dns_reason(e)}); "
                       "pass --kvault-dns-resolver HOST[:PORT] to name the server to ask.") \
            from None
    servers: list[NameServer] = []
    for rdata in sorted(ns_answer, key=lambda r: str(r)):
        host = str(rdata.target).rstrip(".")
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = resolver.resolve(rdata.target, rdtype)
            except dns.exception.DNSException as e:
                logger.debug("no %s for name server %s: %s", rdtype.name, host, e)
                continue
            servers.extend(NameServer(host, str(a), port) for a in answer)
    zone_text = zone.to_text(omit_final_dot=True)
    if not servers:
        raise DNSError(f"None of the name servers of zone {zone_text} "
                       f"({', '.join(str(r) for r in ns_answer)}) resolves to an address; "
                       "pass --kvault-dns-resolver HOST[:PORT] to name the server to ask.")
    return zone_text, servers


def _dns_reason(e: BaseException) -> str:
    if isinstance(e, dns.resolver.NoNameservers):
        return "no server answered: refused or failed"
    if isinstance(e, dns.exception.Timeout):
        return "timed out"
    return " ".join(str(e).split()) or type(e).__name__


def query_txt(server: NameServer, name: str, timeout: float = QUERY_TIMEOUT,
              recursion: bool = False) -> set[str]:
    """The TXT values ``server`` answers for ``name`` right now (empty when none).

    Raises ``DNSError`` when the server gives no usable answer (timeout,
    REFUSED, SERVFAIL), so a lame server is told from a missing record.
    """
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    if not recursion:
        query.flags &= ~dns.flags.RD
    try:
        response = dns.query.udp(query, server.address, port=server.port, timeout=timeout)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, server.address, port=server.port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as e:
        raise DNSError(f"{server}: {_dns_reason(e)}") from None
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return set()
    if rcode != dns.rcode.NOERROR:
        raise DNSError(f"{server}: answered {dns.rcode.to_text(rcode)}")
    qname = dns.name.from_text(name)
    values: set[str] = set()
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.TXT and rrset.name == qname:
            for rdata in rrset:
                values.add(b"".join(rdata.strings).decode("utf-8", "replace"))
    return values


def next_interval(elapsed: float) -> float:
    return min(POLL_MAX_INTERVAL, max(POLL_MIN_INTERVAL, elapsed / 4))


def wait_for_txt(expected: Mapping[str, set[str]],
                 servers: Mapping[str, Sequence[NameServer]],
                 timeout: float, recursion: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll until every server of every name answers all of that name's expected values.

    ``expected``: validation name -> TXT values; ``servers``: validation name ->
    the addresses to ask. The addresses of one NS host count as one server: the
    first of them that answers decides. Returns the seconds waited; raises
    :class:`PropagationTimeout` naming what was still missing.
    """
    start = clock()
    deadline = start + timeout
    # (name, host) -> addresses of that host; all still to be satisfied.
    pending: dict[tuple[str, str], list[NameServer]] = {}
    for name, addrs in servers.items():
        for ns in addrs:
            pending.setdefault((name, ns.host), []).append(ns)
    status: dict[tuple[str, str], str] = {}
    while True:
        for key in list(pending):
            name, _host = key
            want = expected[name]
            for ns in pending[key]:
                remaining = max(0.05, deadline - clock())
                try:
                    seen = query_txt(ns, name, min(QUERY_TIMEOUT, remaining), recursion)
                except DNSError as e:
                    status[key] = str(e)
                    continue
                missing = want - seen
                if not missing:
                    logger.debug("%s answers %s at %s after %.2f s", ns, name,
                                 ", ".join(sorted(want)), clock() - start)
                    del pending[key]
                    status.pop(key, None)
                else:
                    status[key] = (f"{ns}: {len(missing)} of {len(want)} value(s) missing")
                break
        elapsed = clock() - start
        if not pending:
            return elapsed
        if clock() >= deadline:
            details = "; ".join(f"{name} at {status.get((name, host), host)}"
                                for name, host in sorted(pending))
            raise PropagationTimeout(
                f"DNS propagation timed out after {timeout:g} s: {details}. Raise "
                "--kvault-propagation-timeout, check that the DNS provider entry hosts the "
                "zone, or point --kvault-dns-resolver at a server that sees the records.")
        sleep(min(next_interval(elapsed), max(0.0, deadline - clock())))
