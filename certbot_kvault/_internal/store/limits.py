"""The numbers that bound what a record from Vault may hold, and the checks that apply them.

Anyone who may write a record (every renewer, every CI job) writes what every
other renewer reads, so each size, count and wait is held to what certbot and
a CA ever produce, with room to spare, before anything costly is done with it:
a small record must not cost minutes of CPU, nor a conf hours of sleep. The
README's security model quotes these numbers; records.py, trust.py and
renew/status.py apply them. (Times have their own range in timefmt.py, the
renewal memory's bounds are state.py's, a lock's lease renew/locks.py's.)

- a certificate with a CA's 100 names of 253 characters is about 36 KB of
  PEM; chains hold 2 to 4 certificates; an 8192-bit RSA key is 6.4 KB of PEM;
- certbot writes a renewal conf of about 1 KB;
- archive versions: one per renewal; a 6-day certificate renewed every 3
  days for 8 years makes about 1000 (Vault's raft storage refuses an entry
  over 1 MiB by default long before that);
- the whole record: Vault's own default request limit (``max_request_size``,
  32 MiB);
- keys: certbot makes RSA keys of 2048 bits and more (``crypto_util.make_key``;
  beyond 8192 bits making one takes minutes and nothing needs it) and ECDSA
  keys on the NIST curves of ``--elliptic-curve``;
- waits: DNS propagation takes minutes at the slowest providers, never hours;
  a CA asks to be asked again about ARI within a day at the latest;
- how a version was issued (the ``issued`` field, issued.py): known keys with
  short texts only, at most a CA's 100 names.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

MAX_VERSION = 10**6   # archive numbers: far above any lineage's renewals
MAX_PEM_CHARS = {"cert": 64 * 1024, "chain": 256 * 1024, "fullchain": 320 * 1024,
                 "privkey": 16 * 1024}
MAX_CONF_CHARS = 64 * 1024
MAX_ARCHIVE_VERSIONS = 1000
MAX_RECORD_CHARS = 32 * 1024 * 1024
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")
# The longest wait (seconds) a renewal conf from Vault may make a renewer sleep or poll.
MAX_VAULT_WAIT = 600
# RFC 9773 §4.3: a Retry-After is clamped to [1 minute, 1 day] (ari.py); a remembered
# next check further than this from now is no CA's answer (state.py).
ARI_MAX_RETRY = 86400.0


# PEM is printable ASCII in lines (RFC 7468): anything else is no PEM, and would reach the
# files, the env lines and the terminals of those who export it.
_NOT_PEM = re.compile(r"[^\x20-\x7e\t\r\n]")


def pem_problem(kind: str, text: str) -> Optional[str]:
    """What is wrong with a PEM field's text before it is parsed, if anything."""
    limit = MAX_PEM_CHARS[kind]
    if len(text) > limit:
        return f"is longer than any certbot writes ({limit // 1024} KiB at most)"
    if _NOT_PEM.search(text):
        return "holds characters no PEM has (control characters or non-ASCII)"
    return None


def archive_number(value: Any) -> int:
    """An archive number as Vault may hold it (int or digits, 1 to MAX_VERSION); ValueError
    for anything else, before int() could spend long on a huge digit string."""
    if isinstance(value, str) and value.isdigit() and len(value) <= len(str(MAX_VERSION)):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_VERSION:
        return value
    raise ValueError("not an archive number")


def too_big(value: Any, budget: int) -> bool:
    """Whether the texts in a JSON value (keys included) exceed ``budget`` characters;
    stops counting as soon as they do."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            budget -= len(item)
        elif isinstance(item, dict):
            budget -= sum(len(k) for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            budget -= 8
        if budget < 0:
            return True
    return False


def cert_problem(cert: Any, public: Any) -> Optional[str]:
    """Why a certificate is one no CA issues for certbot, if it is: its key (key_problem),
    or a name (subject CN, DNS SAN) holding a character that is not printable (a DNS
    name is printable ASCII; a terminal escape in one would reach every `show`)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    cert.issuer  # noqa: B018 - parsed here: a name that cannot be (TypeError) is no CA's
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    if any(not isinstance(n, str) or not n.isprintable() for n in names):
        return "a name in its certificate holds characters that are not printable; no CA " \
               "issues such a name"
    return key_problem(public)


def key_problem(public: Any) -> Optional[str]:
    """Why a certificate's or private key's public key is one certbot never makes, if it is."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public, rsa.RSAPublicKey) and public.key_size > MAX_RSA_BITS:
        return f"its RSA key has {public.key_size} bits; certbot makes keys of at most " \
               f"{MAX_RSA_BITS}"
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in EC_CURVES:
        return f"its EC key is on curve {public.curve.name}; certbot uses {', '.join(EC_CURVES)}"
    return None


ISSUED_KEYS = frozenset({"acme_server", "account", "profile", "profile_asked_as",
                         "authenticator", "challenge",
                         "certbot", "certbot_kvault", "host", "at", "vault_display_name",
                         "vault_entity_id"})
ISSUED_DNS_KEYS = frozenset({"domain", "validation", "txt", "via", "zone", "entry"})
MAX_ISSUED_TEXT = 255
MAX_ISSUED_NAMES = 100


def clean_issued(raw: Any) -> Optional[dict[str, Any]]:
    """A record's ``issued`` field as data: known keys with short strings only (it comes
    from Vault, and ``show`` prints it); None when nothing usable is left."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)  # KV v1 through some tools stores it as text
        except ValueError:
            return None
    if not isinstance(raw, dict):
        return None

    def short(d: dict[Any, Any], keys: frozenset[str]) -> dict[str, str]:
        return {k: v[:MAX_ISSUED_TEXT] for k, v in d.items()
                if k in keys and isinstance(v, str) and v}

    out: dict[str, Any] = short(raw, ISSUED_KEYS)
    names = raw.get("dns")
    if isinstance(names, list):
        dns = [short(n, ISSUED_DNS_KEYS) for n in names[:MAX_ISSUED_NAMES] if isinstance(n, dict)]
        if any(dns):
            out["dns"] = [n for n in dns if n]
    return out or None
