"""What each certbot record holds, and the checks it passes before use.

``LineageRecord`` (a lineage's current PEMs, its renewal conf and its earlier
archive versions) and ``AccountRecord`` (the JSON texts certbot writes for an
ACME account), with the name, server-path and account-id rules they share.
Records are validated when read *and* before they are written: a corrupt PEM,
a key that does not match its certificate or a hostile name is refused with a
one-line error naming where the record came from, and nothing is written.
Where a record lives in Vault is layout.py's business; on disk, tree.py's.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Optional

from certbot import errors

from certbot_kvault._internal.settings import as_bool
from certbot_kvault._internal.timefmt import floor_time

if TYPE_CHECKING:  # only annotations: records sit below the Vault connection
    from cryptography import x509

    from certbot_kvault._internal.vault import KVEntry

PEM_KINDS = ("cert", "chain", "fullchain", "privkey")

# Far above any real lineage's renewals; a bound keeps a hostile record from
# naming archive files the filesystem refuses (one bad record must fail alone).
MAX_VERSION = 10**6

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

# The longest name (UTF-8 bytes) whose every file stays within a filesystem's 255-byte
# name limit (NAME_MAX): the longest we and certbot make is our ``live/`` switch dir of
# the clash name certbot would give it, ``.NAME-0001..kvault-new`` (18 more), so a name
# certbot accepts cannot stop a pull half-way (ENAMETOOLONG) on this machine or another.
NAME_MAX = 255
MAX_NAME_BYTES = NAME_MAX - len(".-0001..kvault-new")


class RecordError(errors.PluginError):
    """A record in Vault (or about to go there) is malformed; the message names it."""


def validate_name(name: str, what: str = "lineage") -> str:
    """Refuse names that could escape a directory or a Vault path."""
    if not isinstance(name, str) or not name or name in (".", "..") or _BAD_NAME.search(name) \
            or name != name.strip() or name.startswith("-"):
        raise RecordError(f"Invalid {what} name {name!r}: it must be non-empty and hold no '/', "
                          "'\\', '..' or control characters.")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise RecordError(f"Invalid {what} name {name!r}: it is longer than {MAX_NAME_BYTES} "
                          f"bytes, so the files certbot and certbot-kvault make for it would "
                          f"not fit the filesystem's {NAME_MAX}-byte name limit.")
    return name


def validate_server_path(server_path: str) -> str:
    """An account's server dir (``host[:port]/path``): relative, no '..' or empty parts."""
    parts = server_path.split("/")
    if not server_path or any(p in ("", ".", "..") or _BAD_NAME.search(p) for p in parts):
        raise RecordError(f"Invalid ACME server path {server_path!r} (from an account's server "
                          "URL): it must look like host[:port]/path.")
    return server_path


def server_path_for_url(url: str) -> str:
    """The directory certbot names a server's accounts by: host + path of the URL."""
    parsed = urllib.parse.urlparse(url)
    return validate_server_path((parsed.netloc + parsed.path).rstrip("/"))


def account_id_for_key(private_key_json: str) -> str:
    """certbot's account id: MD5 of the PEM public key (certbot/_internal/account.py)."""
    from cryptography.hazmat.primitives import serialization
    from josepy.jwk import JWK  # certbot's own dependency; imported late to keep startup fast

    key = JWK.json_loads(private_key_json)
    pem = key.key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.md5(pem, usedforsecurity=False).hexdigest()


def account_key_json(data: dict[str, Any], where: str) -> str:
    """certbot's private_key.json from a JWK's fields, or one field: JWK JSON or PEM key."""
    from josepy.jwk import JWK  # imported late, as above

    if "kty" in data:
        text = json.dumps(data)
    else:
        values = [v for v in data.values() if isinstance(v, str)]
        text = values[0].strip() if len(values) == 1 else ""
        if text.startswith("-----BEGIN"):
            try:
                return str(JWK.load(text.encode()).json_dumps())
            except (ValueError, TypeError):
                raise RecordError(f"{where}: its PEM is not a usable private key.") from None
    try:
        JWK.json_loads(text)
    except Exception:  # noqa: BLE001 - josepy raises several kinds for one user error
        raise RecordError(f"{where}: neither a JWK (certbot's private_key.json) nor a PEM "
                          "private key.") from None
    return text


@dataclasses.dataclass
class PemSet:
    """One archive version of a lineage."""

    cert: str
    chain: str
    fullchain: str
    privkey: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class CertInfo:
    """What we tell about a certificate without opening the key; each read from the
    certificate when first asked (a pull checks every record and tells nothing)."""

    def __init__(self, cert: x509.Certificate, key_type: str) -> None:
        self._cert = cert
        self.key_type = key_type

    @functools.cached_property
    def domains(self) -> list[str]:
        return _cert_domains(self._cert)

    @functools.cached_property
    def not_before(self) -> str:
        return floor_time(self._cert.not_valid_before_utc.timestamp())

    @functools.cached_property
    def not_after(self) -> str:
        return floor_time(self._cert.not_valid_after_utc.timestamp())

    @functools.cached_property
    def serial(self) -> str:
        return format(self._cert.serial_number, "x")


def inspect_pems(pems: PemSet, where: str, quick: bool = False) -> CertInfo:
    """Parse and cross-check one version: every PEM parses, the key matches the cert.

    ``quick``: an RSA key's own consistency is not checked (its cost is most of a
    check; ``list`` checks every record)."""
    # Here, not at the top: `list`, `--help` and the like never parse a PEM.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        cert = x509.load_pem_x509_certificate(pems.cert.encode())
        # Parsed now, though only CertInfo reads them: certbot reads the names of
        # every certificate it renews, and would choke on this one later.
        len(cert.extensions)
    except ValueError:
        raise RecordError(f"{where}: 'cert' is not a valid PEM certificate (or one of its "
                          "extensions cannot be parsed).") from None
    for kind in ("chain", "fullchain"):
        if kind == "fullchain" and pems.cert.endswith("\n") \
                and pems.fullchain == pems.cert + pems.chain:
            continue  # certbot's fullchain: both its halves parsed already
        try:
            if not x509.load_pem_x509_certificates(getattr(pems, kind).encode()):
                raise ValueError
        except ValueError:
            raise RecordError(f"{where}: '{kind}' is not a valid PEM certificate chain.") \
                from None
    try:
        key = serialization.load_pem_private_key(pems.privkey.encode(), password=None,
                                                 **({"unsafe_skip_rsa_key_validation": True}
                                                    if quick else {}))
    except (ValueError, TypeError):
        raise RecordError(f"{where}: 'privkey' is not a valid unencrypted PEM private key.") \
            from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise RecordError(f"{where}: 'privkey' does not match the certificate's public key.")
    if not pems.fullchain.startswith(pems.cert.strip()):
        raise RecordError(f"{where}: 'fullchain' does not start with 'cert'.")
    if isinstance(key, rsa.RSAPrivateKey):
        key_type = "rsa"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        key_type = "ecdsa"
    else:
        key_type = type(key).__name__
    return CertInfo(cert, key_type)


def _cert_domains(cert: x509.Certificate) -> list[str]:
    """The CN first, then the DNS and IP SANs, as certbot lists a certificate's names."""
    try:
        from acme.crypto_util import get_identifiers_from_x509
    except ImportError:
        # acme 2.7 lacks it, and certbot's get_names_from_cert (deprecated since)
        # lists DNS names only: IP SANs (RFC 8738 orders) are added here.
        from certbot.crypto_util import get_names_from_cert
        from cryptography.hazmat.primitives import serialization
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return get_names_from_cert(pem) + _ip_sans(cert)
    dns_names, ips = get_identifiers_from_x509(cert.subject, cert.extensions)
    return dns_names + ips


def _ip_sans(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


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


@dataclasses.dataclass
class LineageRecord:
    """certificates/<name>: the current version, its renewal conf and the earlier versions."""

    name: str
    version: int
    pems: PemSet
    renewal: str
    auto_renewable: bool
    archive: dict[int, PemSet] = dataclasses.field(default_factory=dict)
    info: Optional[CertInfo] = None
    updated_at: Optional[str] = None
    kv_version: Optional[int] = None
    issued: Optional[dict[str, Any]] = None  # how this version was issued (issued.py)

    def check(self, where: str, quick: bool = False) -> CertInfo:
        """Refuse a bad record (RecordError); ``quick``: the current version's PEMs only,
        without an RSA key's own consistency check (``flaw``)."""
        validate_name(self.name)
        if not 1 <= self.version <= MAX_VERSION:
            raise RecordError(f"{where}: 'version' must be an archive number from 1 to "
                              f"{MAX_VERSION}.")
        if not self.renewal.strip():
            raise RecordError(f"{where}: 'renewal' (the lineage's renewal conf) is empty.")
        for n, pems in self.archive.items():
            if n < 1 or n >= self.version:
                raise RecordError(f"{where}: archive version {n} is not below {self.version}.")
            if not quick:
                inspect_pems(pems, f"{where} (archive version {n})")
        self.info = inspect_pems(self.pems, where, quick)
        return self.info

    def to_kv(self) -> dict[str, Any]:
        info = self.info or self.check(f"lineage {self.name}")
        return {
            **self.pems.as_dict(),
            "renewal": self.renewal,
            "version": self.version,
            "domains": info.domains,
            "not_before": info.not_before,
            "not_after": info.not_after,
            "serial": info.serial,
            "key_type": info.key_type,
            "auto_renewable": self.auto_renewable,
            "updated_at": self.updated_at or floor_time(time.time()),
            "archive": {str(n): p.as_dict() for n, p in sorted(self.archive.items())},
            **({"issued": self.issued} if self.issued else {}),
        }

    @classmethod
    def flaw(cls, name: str, entry: KVEntry, where: str) -> Optional[str]:
        """What show, export and pull would refuse in this record, found quickly enough
        for ``list`` to ask of every lineage (see ``check``); None: nothing."""
        try:
            cls.from_kv(name, entry, where, quick=True)
        except RecordError as e:
            return str(e)
        return None

    @classmethod
    def from_kv(cls, name: str, entry: KVEntry, where: str,
                quick: bool = False) -> LineageRecord:
        d = entry.data
        missing = [f for f in (*PEM_KINDS, "renewal", "version") if d.get(f) in (None, "")]
        if missing:
            raise RecordError(f"{where} is missing {', '.join(missing)}; push the lineage "
                              "again from a machine that has it.")
        try:
            version = int(d["version"])
            archive_raw = d.get("archive") or {}
            if isinstance(archive_raw, str):
                archive_raw = json.loads(archive_raw)
            archive = {int(n): PemSet(**{k: str(p[k]) for k in PEM_KINDS})
                       for n, p in archive_raw.items()}
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            raise RecordError(f"{where}: 'version' or 'archive' is malformed.") from None
        record = cls(
            name=name, version=version,
            pems=PemSet(**{k: str(d[k]) for k in PEM_KINDS}),
            renewal=str(d["renewal"]),
            auto_renewable=as_bool(d.get("auto_renewable", True)),
            archive=archive, updated_at=d.get("updated_at"), kv_version=entry.version,
            issued=clean_issued(d.get("issued")))
        record.check(where, quick)
        return record

    def same_content(self, other: LineageRecord) -> bool:
        """Equal for push's "only what changed" (updated_at and issued do not count)."""
        return (self.version == other.version and self.pems == other.pems
                and self.renewal == other.renewal and self.archive == other.archive
                and self.auto_renewable == other.auto_renewable)


@dataclasses.dataclass
class AccountRecord:
    """accounts/<server>/<id>: the three JSON texts certbot writes, plus the server URL."""

    server: str
    account_id: str
    meta: str
    private_key: str
    regr: str
    kv_version: Optional[int] = None

    @property
    def server_path(self) -> str:
        return server_path_for_url(self.server)

    def check(self, where: str) -> None:
        validate_name(self.account_id, "account")
        if urllib.parse.urlparse(self.server).scheme not in ("http", "https"):
            raise RecordError(f"{where}: 'server' must be the http(s) URL of an ACME "
                              "directory.")
        self.server_path  # noqa: B018 - validates
        for field in ("meta", "private_key", "regr"):
            try:
                json.loads(getattr(self, field))
            except (TypeError, ValueError):
                raise RecordError(f"{where}: '{field}' is not valid JSON.") from None
        try:
            actual = account_id_for_key(self.private_key)
        except Exception:  # noqa: BLE001 - any parse failure is the same user error
            raise RecordError(f"{where}: 'private_key' is not a valid JWK private key.") \
                from None
        if actual != self.account_id:
            raise RecordError(f"{where}: the account id {self.account_id} is not the MD5 of its "
                              f"key ({actual}); the record is corrupt.")

    def to_kv(self) -> dict[str, Any]:
        return {"meta": self.meta, "private_key": self.private_key, "regr": self.regr,
                "server": self.server}

    @classmethod
    def from_kv(cls, server_path: str, account_id: str, entry: KVEntry,
                where: str) -> AccountRecord:
        d = entry.data
        missing = [f for f in ("meta", "private_key", "regr", "server") if not d.get(f)]
        if missing:
            raise RecordError(f"{where} is missing {', '.join(missing)}.")
        record = cls(server=str(d["server"]), account_id=account_id,
                     meta=_json_text(d["meta"]), private_key=_json_text(d["private_key"]),
                     regr=_json_text(d["regr"]), kv_version=entry.version)
        record.check(where)
        if record.server_path != server_path:
            raise RecordError(f"{where}: its server URL {record.server} does not belong under "
                              f"accounts/{server_path}.")
        return record

    def same_content(self, other: AccountRecord) -> bool:
        """Equal as JSON, not as text: `vault kv put @meta.json` stores the JSON's keys,
        which Vault gives back sorted."""
        return self.server == other.server and all(
            json.loads(getattr(self, f)) == json.loads(getattr(other, f))
            for f in ("meta", "private_key", "regr"))


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
