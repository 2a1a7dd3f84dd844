"""The plain-DNS half of the ``kvault`` authenticator: CNAMEs and the propagation check.

Alias mode: :func:`follow_cnames` asks a validation name's authoritative
servers whether it is a CNAME, and follows the chain to where the TXT record
must go. Instead of sleeping a fixed time, :func:`find_authoritative` walks
up from the validation name to the zone (SOA) and resolves the zone's NS hosts to
addresses; :func:`wait_for_txt` then asks every one of them *directly* until
each answers every expected TXT value, with short growing intervals, bounded
by a timeout. ``--kvault-dns-resolver`` replaces the discovered servers with
one server of the user's choosing (:func:`parse_server`). Plain dnspython:
no lexicon, no Vault and no certbot plugin machinery, so it is tested alone
against a DNS server. Its errors are entries.py's ``DNSError``, the one error of
the DNS-01 half.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import time
from typing import Callable, Mapping, Optional, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from certbot_kvault._internal.dns.entries import DNSError

logger = logging.getLogger(__name__)

# Poll schedule of the propagation check: the next query comes after a quarter
# of the time waited so far, at least MIN and at most MAX seconds apart. A
# record that appears after t seconds is seen by about 1.25 t (+ MIN).
POLL_MIN_INTERVAL = 0.2
POLL_MAX_INTERVAL = 2.0
QUERY_TIMEOUT = 2.0
# CNAMEs followed from a validation name (alias mode); lego and the ACME
# servers we know stop at about this depth too.
MAX_CNAME_CHAIN = 8


class PropagationTimeout(DNSError):
    """Some server did not answer the expected TXT values in time."""


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


def _ask(server: NameServer, name: str, rdtype: dns.rdatatype.RdataType, timeout: float,
         recursion: bool) -> dns.message.Message:
    """One query to ``server``; DNSError when it gives no usable answer (timeout,
    REFUSED, SERVFAIL), so a lame server is told from a missing record."""
    query = dns.message.make_query(name, rdtype)
    if not recursion:
        query.flags &= ~dns.flags.RD
    try:
        response = dns.query.udp(query, server.address, port=server.port, timeout=timeout)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, server.address, port=server.port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as e:
        raise DNSError(f"{server}: {_dns_reason(e)}") from None
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise DNSError(f"{server}: answered {dns.rcode.to_text(rcode)}")
    return response


def query_txt(server: NameServer, name: str, timeout: float = QUERY_TIMEOUT,
              recursion: bool = False) -> set[str]:
    """The TXT values ``server`` answers for ``name`` right now (empty when none)."""
    response = _ask(server, name, dns.rdatatype.TXT, timeout, recursion)
    qname = dns.name.from_text(name)
    values: set[str] = set()
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.TXT and rrset.name == qname:
            for rdata in rrset:
                values.add(b"".join(rdata.strings).decode("utf-8", "replace"))
    return values


def query_cname(server: NameServer, name: str, timeout: float = QUERY_TIMEOUT,
                recursion: bool = False) -> Optional[str]:
    """Where ``server`` says the CNAME at ``name`` points (None: no CNAME there)."""
    response = _ask(server, name, dns.rdatatype.CNAME, timeout, recursion)
    qname = dns.name.from_text(name)
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == qname:
            for rdata in rrset:
                return str(rdata.target.to_text(omit_final_dot=True)).lower()
    return None


def follow_cnames(name: str, servers_for: Callable[[str], Sequence[NameServer]],
                  recursion: bool = False, limit: int = MAX_CNAME_CHAIN
                  ) -> tuple[list[str], Optional[str]]:
    """``name`` and the CNAMEs it leads to, each asked where ``servers_for`` says
    (its zone's authoritative servers); the last is where a TXT must go.

    The first server that answers decides each step. A loop and a chain longer
    than ``limit`` are a DNSError. A name no server answers for ends the chain
    there, with the reason as the second value: the CNAMEs that can be seen
    are followed, and the propagation check then waits on the same servers.
    """
    chain = [name.rstrip(".").lower()]
    while True:
        current = chain[-1]
        reasons: list[str] = []
        try:
            servers = list(servers_for(current))
        except DNSError as e:
            return chain, str(e)
        for server in servers:
            try:
                target = query_cname(server, current, recursion=recursion)
                break
            except DNSError as e:
                reasons.append(str(e))
        else:
            return chain, f"cannot ask whether {current} is a CNAME: {'; '.join(reasons)}"
        if target is None:
            return chain, None
        if target in chain:
            raise DNSError(f"CNAME loop: {' -> '.join(chain + [target])}; fix these CNAME "
                           "records before asking for a certificate.")
        chain.append(target)
        if len(chain) - 1 > limit:
            raise DNSError(f"CNAME chain longer than {limit} from {chain[0]} "
                           f"({' -> '.join(chain[:3])} -> ... -> {target}); make it "
                           "shorter: the CNAME can point at the TXT record's name directly.")


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
