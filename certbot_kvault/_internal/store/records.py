"""What each certbot record holds, and the checks it passes before use.

``LineageRecord`` (a lineage's current PEMs, its renewal conf and its earlier
archive versions) and ``AccountRecord`` (the JSON texts certbot writes for an
ACME account), with the name, server-path and account-id rules they share.
Records are validated when read *and* before they are written: a corrupt PEM,
a key that does not match its certificate or a hostile name is refused with a
one-line error naming where the record came from, and nothing is written.
Where a record lives in Vault is layout.py's business; on disk, tree/storage.py's.
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

from certbot_kvault._internal.store import limits
from certbot_kvault._internal.store.timefmt import floor_time, parse_time
from certbot_kvault._internal.vault.settings import as_bool

if TYPE_CHECKING:  # only annotations: records sit below the Vault connection
    from cryptography import x509

    from certbot_kvault._internal.vault.client import KVEntry

PEM_KINDS = ("cert", "chain", "fullchain", "privkey")

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

# The longest name (UTF-8 bytes) whose every file stays within a filesystem's 255-byte
# name limit (NAME_MAX): the longest we and certbot make is our ``live/`` switch dir of
# the clash name certbot would give it, ``.NAME-0001..kvault-new`` (18 more), so a name
# certbot accepts cannot stop a pull half-way (ENAMETOOLONG) on this machine or another.
NAME_MAX = 255
MAX_NAME_BYTES = NAME_MAX - len(".-0001..kvault-new")


class RecordError(errors.PluginError):
    """A record in Vault (or about to go there) is malformed; the message names it."""


def validate_name(name: str, what: str = "lineage", max_bytes: int = MAX_NAME_BYTES) -> str:
    """Refuse names that could escape a directory or a Vault path, or not fit a file's."""
    if not isinstance(name, str) or not name or name in (".", "..") or _BAD_NAME.search(name) \
            or name != name.strip() or name.startswith("-"):
        raise RecordError(f"Invalid {what} name {name!r}: it must be non-empty and hold no '/', "
                          "'\\', '..' or control characters.")
    if len(name.encode("utf-8", "surrogatepass")) > max_bytes:
        raise RecordError(f"Invalid {what} name {name!r}: it is longer than {max_bytes} "
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


def inspect_pems(pems: PemSet, where: str,
                 keys: Optional[dict[str, tuple[bytes, str]]] = None) -> CertInfo:
    """Parse and cross-check one version: every PEM parses, the key matches the cert.

    ``keys`` remembers each private key text checked already (its public key and
    type), so a key kept across archive versions (``reuse_key``) is loaded once.
    """
    # Here, not at the top: `list`, `--help` and the like never parse a PEM.
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    for kind in PEM_KINDS:
        problem = limits.pem_problem(kind, getattr(pems, kind))
        if problem is not None:
            raise RecordError(f"{where}: '{kind}' {problem}.")
    try:
        cert = x509.load_pem_x509_certificate(pems.cert.encode())
        # Names and extensions parsed now (cert_problem), though only CertInfo shows them:
        # certbot reads the names of every certificate it renews, and would choke later.
        problem = limits.cert_problem(cert, cert.public_key())  # before any costly work
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: a bad name's type
        raise RecordError(f"{where}: 'cert' is not a valid PEM certificate (or its names or "
                          "extensions cannot be parsed).") from None
    public = cert.public_key()
    if problem is not None:
        raise RecordError(f"{where}: {problem}.")
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
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    known = keys.get(pems.privkey) if keys is not None else None
    if known is None:
        known = _private_key(pems.privkey, where)
        if keys is not None:
            keys[pems.privkey] = known
    key_der, key_type = known
    if key_der != public.public_bytes(der, spki):
        raise RecordError(f"{where}: 'privkey' does not match the certificate's public key.")
    if not pems.fullchain.startswith(pems.cert.strip()):
        raise RecordError(f"{where}: 'fullchain' does not start with 'cert'.")
    return CertInfo(cert, key_type)


def _private_key(text: str, where: str) -> tuple[bytes, str]:
    """(public key as SubjectPublicKeyInfo DER, key type) of a PEM private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        # The RSA consistency check (OpenSSL's RSA_check_key) costs seconds for an
        # 8192-bit key and proves nothing the match with the certificate does not: a
        # key that matches the certificate's public key is the lineage's key.
        key = serialization.load_pem_private_key(text.encode(), password=None,
                                                 unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError):
        raise RecordError(f"{where}: 'privkey' is not a valid unencrypted PEM private key.") \
            from None
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        key_type = "rsa"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        key_type = "ecdsa"
    else:
        key_type = type(key).__name__
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return der, key_type


def _cert_domains(cert: x509.Certificate) -> list[str]:
    """The CN first, then the DNS and IP SANs, as certbot lists a certificate's names."""
    import importlib

    # import_module, not a from-import: acme wraps crypto_util in a module subclass, and a
    # from-import asks the wrapper for __path__, a lookup CPython 3.13.0 can fail with
    # "SystemError: error return without exception set" (seen in a pytest-xdist worker).
    get_identifiers_from_x509 = getattr(importlib.import_module("acme.crypto_util"),
                                        "get_identifiers_from_x509", None)
    if get_identifiers_from_x509 is None:
        # acme 2.7 lacks it, and certbot's get_names_from_cert (deprecated since)
        # lists DNS names only: IP SANs (RFC 8738 orders) are added here.
        from certbot.crypto_util import get_names_from_cert
        from cryptography.hazmat.primitives import serialization
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return get_names_from_cert(pem) + _ip_sans(cert)
    dns_names: list[str]
    ips: list[str]
    dns_names, ips = get_identifiers_from_x509(cert.subject, cert.extensions)
    return dns_names + ips


def _ip_sans(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


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

    def check(self, where: str) -> CertInfo:
        validate_name(self.name)
        if not 1 <= self.version <= limits.MAX_VERSION:
            raise RecordError(f"{where}: 'version' must be an archive number from 1 to "
                              f"{limits.MAX_VERSION}.")
        if not self.renewal.strip():
            raise RecordError(f"{where}: 'renewal' (the lineage's renewal conf) is empty.")
        if len(self.renewal) > limits.MAX_CONF_CHARS:
            raise RecordError(f"{where}: 'renewal' is longer than any renewal conf certbot "
                              f"writes ({limits.MAX_CONF_CHARS // 1024} KiB at most).")
        if len(self.archive) > limits.MAX_ARCHIVE_VERSIONS:
            raise RecordError(f"{where}: it holds {len(self.archive)} archive versions; at most "
                              f"{limits.MAX_ARCHIVE_VERSIONS} are kept.")
        keys: dict[str, tuple[bytes, str]] = {}
        for n, pems in self.archive.items():
            if n < 1 or n >= self.version:
                raise RecordError(f"{where}: archive version {n} is not below {self.version}.")
            inspect_pems(pems, f"{where} (archive version {n})", keys)
        self.info = inspect_pems(self.pems, where, keys)
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
    def from_kv(cls, name: str, entry: KVEntry, where: str) -> LineageRecord:
        d = entry.data
        missing = [f for f in (*PEM_KINDS, "renewal", "version") if d.get(f) in (None, "")]
        if missing:
            raise RecordError(f"{where} is missing {', '.join(missing)}; push the lineage "
                              "again from a machine that has it.")
        if limits.too_big(d, limits.MAX_RECORD_CHARS):
            raise RecordError(f"{where} is larger than any lineage certbot makes "
                              f"({limits.MAX_RECORD_CHARS // 2**20} MiB at most).")
        try:
            version = limits.archive_number(d["version"])
        except ValueError:
            raise RecordError(f"{where}: 'version' must be an archive number from 1 to "
                              f"{limits.MAX_VERSION}.") from None
        try:
            archive_raw = d.get("archive") or {}
            if isinstance(archive_raw, str):
                archive_raw = json.loads(archive_raw)
            if len(archive_raw) > limits.MAX_ARCHIVE_VERSIONS:
                raise RecordError(f"{where}: it holds {len(archive_raw)} archive versions; at "
                                  f"most {limits.MAX_ARCHIVE_VERSIONS} are kept.")
            archive = {limits.archive_number(n): PemSet(**{k: _field(p, k, where)
                                                          for k in PEM_KINDS})
                       for n, p in archive_raw.items()}
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError,
                RecursionError):
            raise RecordError(f"{where}: 'version' or 'archive' is malformed.") from None
        at = parse_time(d.get("updated_at"))  # `show` prints it: a time, or nothing
        record = cls(
            name=name, version=version, pems=PemSet(**{k: _field(d, k, where) for k in PEM_KINDS}),
            renewal=_field(d, "renewal", where),
            auto_renewable=as_bool(d.get("auto_renewable", True)),
            archive=archive, kv_version=entry.version,
            updated_at=None if at is None else floor_time(at),
            issued=limits.clean_issued(d.get("issued")))
        record.check(where)
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
        return self.to_kv() == other.to_kv()


def _field(data: dict[str, Any], key: str, where: str) -> str:
    """A text field (a number or a list is no PEM nor conf, whatever str() makes of it)."""
    value = data[key]
    if not isinstance(value, str):
        raise RecordError(f"{where}: '{key}' is not text.")
    return value


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
