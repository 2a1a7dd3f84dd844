"""How each certificate version was issued: the ``issued`` field of ``certificates/<lineage>``.

Every push that writes a new certificate version stamps it (:func:`stamp`)
with what an auditor asks of it: the ACME server, account and profile and the
challenge (from the lineage's renewal conf, which certbot writes with the
version), the DNS entry, zone and alias target each name's TXT went to (from
the plugin's note, below), certbot's version (the conf's) and ours, the host,
and who wrote it to Vault (the token's display name and entity id, from
lookup-self; never the token or its accessor). No secret is in any of it.

Why a field of the record and not KV v2 ``custom_metadata``: metadata belongs
to the secret, not to a version, so version 8 would overwrite what version 7
said; the record's data is per version (``vault kv get -version=7`` answers
for 7) and exists on KV v1 too, where only the latest version is kept.
Consumers that read the record's other fields are unaffected.

The plugin runs inside certbot, but the push runs in the deploy hook, the
plugin's exit handler or ``certbot-kvault renew`` after certbot: the plugin
leaves a note per run in ``<config-dir>/kvault/issued/`` (:func:`note`) and
the push takes, for each of the version's names, the newest note younger than
a day (:func:`dns_for`). A name without one was not challenged from this
config dir (an authorization the CA reused, another authenticator).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any, Optional, Sequence

import certbot
import configobj

from certbot_kvault._internal.store.limits import clean_issued
from certbot_kvault._internal.store.records import LineageRecord
from certbot_kvault._internal.store.timefmt import floor_time
from certbot_kvault._internal.tree import confs, portable
from certbot_kvault._internal.tree.files import atomic_write, make_dirs
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultError

logger = logging.getLogger(__name__)

NOTES_DIR = os.path.join("kvault", "issued")
NOTE_MAX_AGE = 86400.0
MAX_NOTES = 1000
MAX_NOTE_BYTES = 256 * 1024

# The challenge each authenticator answers (certbot's own plugins; dns-* are DNS-01).
CHALLENGES = {"kvault": "dns-01", "standalone": "http-01", "webroot": "http-01",
              "nginx": "http-01", "apache": "http-01"}

_identities: weakref.WeakKeyDictionary[VaultClient, dict[str, str]] = \
    weakref.WeakKeyDictionary()
_identities_lock = threading.Lock()


def _notes_dir(config_dir: str) -> str:
    return os.path.join(config_dir, NOTES_DIR)


def note(config_dir: str, dns: Sequence[dict[str, str]]) -> Optional[str]:
    """Leave what this run's DNS-01 did (per name: domain, txt, via, zone, entry) for the
    push of the version it issues; the note's path, or None when it cannot be written."""
    path = os.path.join(_notes_dir(config_dir), f"{time.time_ns()}-{os.getpid()}.json")
    body = {"at": time.time(), "host": socket.gethostname(), "dns": list(dns)}
    try:
        make_dirs(os.path.dirname(path), 0o700)
        atomic_write(path, json.dumps(body, sort_keys=True).encode(), 0o600)
    except OSError as e:
        # The certificate matters more than its record of how: issue anyway.
        logger.warning("kvault could not note how %s were validated (%s): the pushed "
                       "version will not name its DNS entry", path, e)
        return None
    return path


def dns_for(config_dir: str, domains: Sequence[str], now: Optional[float] = None,
            ) -> tuple[list[dict[str, str]], Optional[str]]:
    """The newest noted DNS-01 target of each of ``domains`` and the host that noted it."""
    wanted = {d.lower() for d in domains}
    found: dict[str, dict[str, str]] = {}
    host: Optional[str] = None
    for note_host, items in _notes(config_dir, time.time() if now is None else now):
        for item in items:
            domain = item.get("domain", "").lower()
            if domain in wanted and domain not in found:
                found[domain] = item
                host = host or note_host
    return [found[d] for d in sorted(found)], host


Notes = list[tuple[str, float, Optional[str], list[dict[str, str]]]]  # file, at, host, names
_notes_cache: dict[str, tuple[list[str], Notes]] = {}
_notes_lock = threading.Lock()


def _notes(config_dir: str, now: float) -> list[tuple[Optional[str], list[dict[str, str]]]]:
    """(host, names) of each note under a day old, newest first; older ones are removed.
    Each note is read once: a push of a fleet stamps many versions."""
    directory = _notes_dir(config_dir)
    with _notes_lock:
        try:
            # Not a temp file another process is writing (files.atomic_write).
            names = sorted((n for n in os.listdir(directory) if n.endswith(".json")),
                           reverse=True)[:MAX_NOTES]
        except OSError:
            return []
        cached = _notes_cache.get(directory)
        if cached is None or cached[0] != names:
            parsed: Notes = []
            for name in names:
                body = _read_note(os.path.join(directory, name))
                at = body.get("at") if body else None
                if body is None or not isinstance(at, (int, float)):
                    _remove(os.path.join(directory, name))
                    continue
                host = body.get("host")
                items = (clean_issued({"dns": body.get("dns")}) or {}).get("dns", [])
                parsed.append((name, float(at),
                               host[:255] if isinstance(host, str) else None, items))
            cached = _notes_cache[directory] = (names, parsed)
        out = []
        for name, at, host, items in cached[1]:
            if now - at > NOTE_MAX_AGE:
                _remove(os.path.join(directory, name))
            else:
                out.append((host, items))
        return out


def _read_note(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read(MAX_NOTE_BYTES + 1)[:MAX_NOTE_BYTES])
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def identity(vault: VaultClient) -> dict[str, str]:
    """The token's display name and entity id (lookup-self), once per client; {} when the
    policy denies lookup-self."""
    with _identities_lock:
        if vault in _identities:
            return _identities[vault]
    try:
        who = vault.whoami()
    except VaultError as e:
        logger.debug("lookup-self failed: %s", e)
        who = {}
    out = {f"vault_{k}": str(who[k])[:255] for k in ("display_name", "entity_id")
           if who.get(k)}
    with _identities_lock:
        _identities[vault] = out
    return out


def describe(renewal: str, dns: list[dict[str, str]], host: Optional[str],
             vault: VaultClient, now: Optional[float] = None) -> dict[str, Any]:
    """The ``issued`` field of a new version with renewal conf ``renewal``."""
    try:
        conf = confs.parse_text(renewal)  # as data: a %(...) template is text here
        params = conf.get("renewalparams")
    except confs.ConfError:
        conf, params = {}, None
    if not isinstance(params, configobj.Section):
        params = {}

    def text(value: Any) -> str:
        return value.strip() if isinstance(value, str) and value.strip() != "None" else ""

    authenticator = text(params.get("authenticator"))
    challenge = CHALLENGES.get(authenticator) or (
        "dns-01" if authenticator.startswith("dns-") else
        text(params.get("pref_challs")).split(",")[0].strip() or "unknown")
    profile = portable.profile_asked(renewal)
    out: dict[str, Any] = {
        "acme_server": text(params.get("server")),
        "account": text(params.get("account")),
        # What the conf asked for: a preferred profile is used only if the CA offers it.
        "profile": profile[1] if profile else "",
        "profile_asked_as": profile[0] if profile else "",
        "authenticator": authenticator,
        "challenge": challenge,
        "certbot": text(conf.get("version")) or certbot.__version__,
        "certbot_kvault": _our_version(),
        "host": host or socket.gethostname(),
        "at": floor_time(time.time() if now is None else now),
        **identity(vault),
    }
    if dns:
        out["dns"] = dns
    return clean_issued(out) or {}


def _our_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("certbot-kvault")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def stamp(config_dir: str, vault: VaultClient, local: LineageRecord,
          remote: Optional[LineageRecord]) -> LineageRecord:
    """``local`` as it is to be written: a version Vault has keeps its ``issued`` (a conf
    change is no new issuance); a new one gets its own."""
    if remote is not None and remote.version == local.version:
        local.issued = remote.issued
        return local
    domains = local.info.domains if local.info is not None else []
    dns, host = dns_for(config_dir, domains)
    local.issued = describe(local.renewal, dns, host, vault)
    return local


def lines(issued: Optional[dict[str, Any]]) -> list[tuple[str, str]]:
    """What ``show`` says about how the current version was issued."""
    if not issued:
        return [("issued", "not recorded (pushed before certbot-kvault recorded it)")]

    def shown(value: Any) -> str:
        text = str(value)
        return text if text.isprintable() else ascii(text)

    out = [("issued_host", issued.get("host", "-")), ("issued_pushed_at", issued.get("at", "-"))]
    profile = issued.get("profile") or "-"
    if issued.get("profile") and issued.get("profile_asked_as"):
        profile += f" (asked as {issued['profile_asked_as']})"
    out += [("acme_server", issued.get("acme_server") or "-"),
            ("account", issued.get("account") or "-"), ("profile", profile),
            ("challenge", issued.get("challenge") or "-"),
            ("authenticator", issued.get("authenticator") or "-")]
    for item in issued.get("dns", []):
        alias = (f" -> {item['txt']} ({item.get('via') or 'alias'})"
                 if item.get("txt") and item["txt"] != item.get("validation") else "")
        out.append(("dns", f"{item.get('domain', '?')}: TXT {item.get('validation', '?')}"
                           f"{alias} in zone {item.get('zone', '?')} with entry "
                           f"dns/{item.get('entry', '?')}"))
    out.append(("versions", f"certbot {issued.get('certbot', '?')}, certbot-kvault "
                            f"{issued.get('certbot_kvault', '?')}"))
    token = issued.get("vault_display_name") or "-"
    if issued.get("vault_entity_id"):
        token += f" (entity {issued['vault_entity_id']})"
    out.append(("vault_token", token))
    return [(k, shown(v)) for k, v in out]
