"""DNS-01 for the ``kvault`` authenticator: provider entries in Vault and the lexicon glue.

* **Provider entries.** ``<mount>/<prefix>/dns/<name>`` holds ``provider`` (a
  dns-lexicon provider name), optionally ``zones`` (the DNS zones the entry
  serves) and that provider's options (for PowerDNS: ``auth_token``,
  ``pdns_server``, ``pdns_server_id``). :func:`load_entry` reads one (or the
  only one), :func:`load_entries` the set a run chooses from by zone
  (:class:`EntrySet`), :func:`check_provider` / :func:`check_options` refuse
  names lexicon does not know, and :func:`lexicon_config` turns an entry into
  the ``ConfigResolver`` a lexicon ``Client`` takes.
* **Glue.** :func:`achall_domain` bridges certbot versions.

Where each TXT goes and writing it is challenge.py; the active propagation check
and the CNAME lookups, plain DNS without lexicon or Vault, are propagation.py.
lexicon runs tldextract on every ``Client``; its answer does
not matter here (the authenticator always names the zone through
``delegated``), so :func:`quiet_tldextract` keeps it off the network and its
offline traceback out of the user's terminal.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import importlib.metadata
import logging
import os
import re
from types import ModuleType
from typing import Any, Iterator, Mapping, NoReturn, Optional

from certbot import achallenges, errors

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import RecordError, validate_name
from certbot_kvault._internal.vault.errors import VaultPermissionDenied

logger = logging.getLogger(__name__)

PROVIDER_FIELD = "provider"
ZONES_FIELD = "zones"
# Fields of an entry that are ours, not the provider's options.
RESERVED_FIELDS = frozenset({PROVIDER_FIELD, ZONES_FIELD})
MAX_ZONES = 100
# What `dns add` and a run read: the names of DNS zones and hosts (letters,
# digits, '-' and '_' labels), nothing a provider API or a log could misread.
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")

# The one private module of dns-lexicon certbot-kvault uses (see _lexicon_discovery).
LEXICON_DISCOVERY = "lexicon._private.discovery"


class DNSError(errors.PluginError):
    """A DNS-01 problem; the message is one line naming the fix."""


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


def check_provider(provider: str, where: str, entry_name: Optional[str] = None) -> None:
    """Refuse a provider name lexicon does not know or cannot load. ``entry_name``: the
    stored entry that names it (the fix is then to replace that entry)."""
    providers = available_providers()
    if provider in providers and providers[provider]:
        return
    if provider in providers:
        raise DNSError(f"DNS provider {provider!r} ({where}) needs extra packages: run "
                       f"`pip install 'dns-lexicon[{provider}]'` where certbot runs.")
    close = difflib.get_close_matches(provider, list(providers), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    fix = "" if entry_name is None else (
        f" Fix it with `certbot-kvault dns add {entry_name} --provider PROVIDER --option "
        "KEY=VALUE ... --force`.")
    raise DNSError(f"Unknown DNS provider {provider!r} ({where}): it must be a dns-lexicon "
                   f"provider name, e.g. powerdns, cloudflare, route53.{hint}{fix}")


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


def dns_name(text: Any, what: str) -> str:
    """A DNS name as we compare them (lower case, no final dot); DNSError if it is none."""
    name = text.strip().rstrip(".").lower() if isinstance(text, str) else ""
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        shown = text if isinstance(text, str) and text.isprintable() else ascii(text)
        raise DNSError(f"{what}: {shown[:80]!r} is not a DNS name (letters, digits, '-', "
                       "'_' and dots).")
    return name


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def parse_zones(value: Any, where: str) -> tuple[str, ...]:
    """An entry's ``zones``: a list, or one string of names separated by commas or spaces."""
    if value is None or value == "":
        return ()
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_ZONES:
        raise DNSError(f"{where}: '{ZONES_FIELD}' must be a list of at most {MAX_ZONES} DNS "
                       "zone names; fix it with `certbot-kvault dns add ... --zone ZONE "
                       "--force`.")
    return tuple(sorted({dns_name(z, f"{where} '{ZONES_FIELD}'") for z in items}))


@dataclasses.dataclass(frozen=True)
class DnsEntry:
    """One ``dns/<name>`` record: the provider, the zones it says it serves and the
    provider's options (secrets; never print them)."""

    name: str
    provider: str
    options: Mapping[str, str]
    where: str
    zones: tuple[str, ...] = ()

    def __repr__(self) -> str:  # options hold secrets: never let them reach a log
        return (f"DnsEntry(name={self.name!r}, provider={self.provider!r}, "
                f"zones={list(self.zones)!r}, options={sorted(self.options)!r})")

    @classmethod
    def from_record(cls, name: str, data: Mapping[str, Any], where: str) -> DnsEntry:
        provider = data.get(PROVIDER_FIELD)
        if not isinstance(provider, str) or not provider.strip():
            raise DNSError(f"{where} has no '{PROVIDER_FIELD}' field; store one with "
                           f"`certbot-kvault dns add {name} --provider PROVIDER "
                           "--option KEY=VALUE ... --force`.")
        options = {normalize_key(k): "" if v is None else str(v)
                   for k, v in data.items() if k not in RESERVED_FIELDS}
        return cls(name=name, provider=provider.strip(), options=options, where=where,
                   zones=parse_zones(data.get(ZONES_FIELD), where))

    def check(self) -> None:
        check_provider(self.provider, self.where, self.name)

    def zone_claiming(self, name: str) -> Optional[str]:
        """The longest of this entry's zones that holds ``name``."""
        matches = [z for z in self.zones if in_zone(name, z)]
        return max(matches, key=len) if matches else None


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


@dataclasses.dataclass
class EntrySet:
    """The provider entries one run chooses from, for each name the entry that hosts it.

    An entry that names its zones serves names in them (the longest zone wins
    across entries); ``default`` (``--kvault-dns NAME``, else the only entry)
    serves the names no entry claims, unless it names zones of its own.
    """

    default: Optional[DnsEntry]
    zoned: list[DnsEntry]
    where: str  # dns/ in Vault
    unlisted: Optional[str] = None  # why dns/ could not be listed

    def for_name(self, name: str) -> DnsEntry:
        claims = sorted((-len(z), e.name, e) for e in self.zoned
                        if (z := e.zone_claiming(name)))
        if claims:
            if len(claims) > 1 and claims[0][0] == claims[1][0]:
                logger.warning("DNS entries %s and %s both claim the zone of %s; using %s",
                               claims[0][1], claims[1][1], name, claims[0][1])
            return claims[0][2]
        default = self.default
        if default is not None and not default.zones:
            return default
        served = "; ".join(f"{e.name}: {', '.join(e.zones)}" for e in self.zoned)
        hint = f" (entries and their zones: {served})" if served else ""
        if self.unlisted:
            hint += f" (cannot list {self.where}/: {self.unlisted})"
        raise DNSError(f"No DNS provider entry in Vault hosts {name}{hint}: add its zone to "
                       "the entry that serves it (`certbot-kvault dns add NAME ... --zone "
                       "ZONE --force`) or name an entry without zones with --kvault-dns NAME.")


def load_entries(layout: Layout, default: Optional[str]) -> EntrySet:
    """Every entry this token may read (an entry it may not is someone else's), checked.

    ``default`` is read by name; with none, the only entry listed is the
    default. A token that may not list ``dns/`` uses its default alone.
    """
    where = layout.where("dns")
    unlisted: Optional[str] = None
    try:
        names = layout.list_dns()
    except VaultPermissionDenied as e:
        names, unlisted = [], str(e)
    chosen = load_entry(layout, default) if default else None
    entries: list[DnsEntry] = [chosen] if chosen else []
    for name in names:
        if chosen is not None and name == chosen.name:
            continue
        try:
            data = layout.load_dns(validate_name(name, "DNS entry"))
            if data is None:
                continue
            entry = DnsEntry.from_record(name, data, entry_where(layout, name))
            entry.check()
        except VaultPermissionDenied:
            logger.debug("DNS entry %s is not readable with this token: not used", name)
            continue
        except (DNSError, RecordError) as e:
            logger.warning("Not using DNS provider entry %s: %s", name, e)
            continue
        entries.append(entry)
    if chosen is None and len(entries) == 1 and not unlisted:
        chosen = entries[0]
    if chosen is None and not entries:
        if unlisted:
            raise DNSError(f"Cannot list the DNS provider entries in Vault ({where}/: "
                           f"{unlisted}); name one with --kvault-dns NAME.")
        raise DNSError(f"No DNS provider entry in Vault ({where}/); create one with "
                       "`certbot-kvault dns add NAME --provider PROVIDER --option "
                       "KEY=VALUE ...`.")
    return EntrySet(default=chosen, zoned=[e for e in entries if e.zones], where=where,
                    unlisted=unlisted)


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


# --------------------------------------------------------------------------- glue


def achall_domain(achall: achallenges.AnnotatedChallenge) -> str:
    # certbot >= 4 names it achall.identifier (IP identifiers); 2.x/3.x achall.domain.
    identifier = getattr(achall, "identifier", None)
    if identifier is not None:
        return str(identifier.value)
    return str(getattr(achall, "domain"))  # noqa: B009 - absent from newer stubs
