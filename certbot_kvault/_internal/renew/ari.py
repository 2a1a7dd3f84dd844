"""ACME Renewal Information (RFC 9773): asking the CA when to renew one certificate.

certbot 5 asks ARI when it renews and forgets the answer when it exits. A
stateless renewer decides what is due before it pulls anything and keeps the
answer in Vault between runs (state.py), so it asks the CA itself, as certbot
does (acme's ``ClientNetwork`` for TLS and User-Agent, ``ClientV2.get_directory``
for the directory, ``RenewalInfo`` to read the answer), and returns the whole
answer: the window, the time picked in it once, and when the CA may be asked
again. Owned here: one directory fetch per server per run (failures cached too:
an unreachable CA costs one request per run, not one per lineage), the
certificate ID, Retry-After and its clamps.

acme's ``ClientV2.retry_after`` (in every acme from 2.7 to 5.x) is not used for
Retry-After: it returns a naive datetime, in local time for a number of seconds
but in UTC for an HTTP-date (an hour off under TZ=Europe/Berlin), reads a date's
zone offset as days, and asks the wall clock rather than the run's clock. The
next check is kept in the renewal memory, so it must be an exact instant.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import email.utils
import importlib.metadata
import math
import platform
import random
import re
import threading
import time
import urllib.parse
from typing import Any, Callable, Optional

import certbot
import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from certbot import errors
from cryptography import x509
from josepy.errors import DeserializationError

from certbot_kvault._internal.store.limits import ARI_MAX_RETRY
from certbot_kvault._internal.vault.redact import one_line, redact

DEFAULT_RETRY = 6 * 3600.0   # RFC 9773 §4.3 (and certbot): no usable Retry-After, or an error
MIN_RETRY = 60.0             # RFC 9773 §4.3: a Retry-After is clamped to [1 minute, 1 day]
MAX_RETRY = ARI_MAX_RETRY    # (limits.py: a remembered next check beyond it is refused)
PY_VERSION = platform.python_version()
# Older acme (2.7, certbot 2.7's) cannot read ARI answers: then nobody is asked.
_RENEWAL_INFO: Any = getattr(messages, "RenewalInfo", None)


@dataclasses.dataclass(frozen=True)
class AriAnswer:
    """The CA's answer for one certificate; times are POSIX seconds."""

    start: float                 # suggested window start
    end: float                   # suggested window end
    picked: float                # a uniformly random time in [start, end], chosen once
    next_check: float            # when the CA may be asked again (Retry-After, clamped)
    explanation: Optional[str]   # the explanationURL, if it is an http(s) URL


class AriError(errors.Error):
    """Asking the CA failed; one line, no secrets. Ask again no sooner than ``next_check``."""

    def __init__(self, message: str, next_check: float) -> None:
        super().__init__(message)
        self.next_check = next_check


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial DER bytes)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("its Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    # DER INTEGER content: big-endian two's complement, room for the sign bit.
    der = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)
    return ".".join(base64.urlsafe_b64encode(part).decode("ascii").rstrip("=")
                    for part in (aki.key_identifier, der))


_ERRNO = re.compile(r"\[Errno -?\d+\] [^)(\"']+")


def _why(e: BaseException) -> str:
    """A failed request as its cause in a few words (requests' own texts nest three deep)."""
    if e.args and isinstance(e.args[0], requests.Response):  # acme: an error page, not JSON
        return f"HTTP {e.args[0].status_code}"
    if isinstance(e, requests.exceptions.SSLError):
        return "TLS error: its certificate is not trusted (see REQUESTS_CA_BUNDLE)"
    if isinstance(e, requests.Timeout):
        return "no answer in time"
    errno = _ERRNO.search(str(e)) if isinstance(e, requests.ConnectionError) else None
    return errno.group(0).strip() if errno else one_line(e)


def _http_url(value: object) -> Optional[str]:
    """``value`` if it is an absolute http(s) URL with no whitespace or control chars, of
    at most 2048 characters (what the renewal memory keeps, state.py)."""
    if not isinstance(value, str) or len(value) > 2048 \
            or any(c.isspace() or ord(c) < 32 for c in value):
        return None
    parts = urllib.parse.urlsplit(value)
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def retry_after(header: Optional[str], now: float) -> float:
    """When to ask again: Retry-After (seconds or HTTP-date), 6 h without one, clamped."""
    when = now + DEFAULT_RETRY
    text = (header or "").strip()
    if text.isdigit():
        when = now + int(text)
    elif text:
        try:  # an HTTP-date is GMT even when it says -0000 (read as naive)
            parsed = email.utils.parsedate_to_datetime(text)
            when = parsed.replace(tzinfo=parsed.tzinfo or datetime.timezone.utc).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    return min(max(when, now + MIN_RETRY), now + MAX_RETRY)


class AriClients:
    """Asks ACME servers for renewal info; one directory fetch per server per instance."""

    def __init__(self, *, timeout: float = 10.0, clock: Callable[[], float] = time.time,
                 rand: Callable[[float, float], float] = random.uniform) -> None:
        self.timeout, self.clock, self.rand = timeout, clock, rand
        self.notes: list[str] = []
        self._base: dict[str, Optional[str]] = {}   # server -> renewalInfo URL, or None
        self._mutex = threading.Lock()
        # The directory is read with the network's own timeout (get_directory passes none).
        self._net = acme_client.ClientNetwork(key=None, verify_ssl=True, user_agent=(
            f"CertbotACMEClient/{certbot.__version__} (certbot-kvault ARI) Py/{PY_VERSION}"),
            timeout=math.ceil(timeout))

    def supported(self, server: str) -> bool:
        """Does ``server``'s directory offer ``renewalInfo``? Never raises."""
        return self._renewal_info_base(server) is not None

    def _renewal_info_base(self, server: str) -> Optional[str]:
        with self._mutex:  # renewers ask from a thread pool; still one fetch per server
            if server not in self._base:
                self._base[server] = self._fetch_base(server)
            return self._base[server]

    def _fetch_base(self, server: str) -> Optional[str]:
        shown = redact(server)
        if _RENEWAL_INFO is None:
            version = importlib.metadata.version("acme")
            self.notes.append(f"ARI: the installed acme {version} cannot read renewal info;"
                              f" {shown} not asked, the lifetime rule applies")
            return None
        try:
            directory = acme_client.ClientV2.get_directory(server, self._net)
        except Exception as e:  # noqa: BLE001 - any failure only means "not asked"
            # acme's Directory takes a JSON object of its fields' types; anything else
            # (not an object, a "meta" of null) fails on it as a TypeError or
            # AttributeError, and certbot, reading the directory the same way, would too.
            why = "the answer is not an ACME directory acme can read" if isinstance(
                e, (TypeError, AttributeError)) else _why(e)
            self.notes.append(f"ARI: could not read the ACME directory {shown}: {why};"
                              " the lifetime rule applies")
            return None
        try:
            offered = directory["renewalInfo"]
        except KeyError:
            return None  # Pebble 2.4 and OpenBao's PKI ACME: no ARI, nothing wrong
        base = _http_url(offered)
        if base is None:
            self.notes.append(f"ARI: the ACME directory {shown} has a renewalInfo that is not"
                              " an http(s) URL; the lifetime rule applies")
        return base

    def ask(self, server: str, cert_pem: str) -> Optional[AriAnswer]:
        """The CA's renewal info for ``cert_pem``; None when the CA has no ARI or the cert
        has expired (RFC 9773: never ask about one). AriError: failed or malformed answer."""
        now = self.clock()
        fail_next = now + DEFAULT_RETRY
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
            expires = cert.not_valid_after_utc.timestamp()
        except ValueError as e:
            raise AriError(f"ARI: not a PEM certificate: {one_line(e)}", fail_next) from e
        if expires <= now:
            return None
        base = self._renewal_info_base(server)
        if base is None:
            return None
        try:
            url = f"{base.rstrip('/')}/{cert_id(cert)}"
        except (x509.ExtensionNotFound, ValueError) as e:
            raise AriError(f"ARI: the certificate cannot be named to {redact(base)}: "
                           f"{one_line(e)}", fail_next) from e
        try:
            resp = self._net.get(url, timeout=self.timeout)
            body = resp.json()
            window = _RENEWAL_INFO.from_json(body).suggested_window
            start, end = _timestamp(window.start), _timestamp(window.end)
            explanation = _http_url(body.get("explanationURL"))
        except (requests.RequestException, acme_errors.Error, DeserializationError,
                ValueError, TypeError, AttributeError) as e:
            raise AriError(f"ARI: asking {redact(url)} failed: {_why(e)}", fail_next) from e
        if end < start:
            raise AriError(f"ARI: {redact(url)} answered a window that ends before it starts",
                           fail_next)
        picked = min(max(self.rand(start, end), start), end)
        return AriAnswer(start=start, end=end, picked=picked,
                         next_check=retry_after(resp.headers.get("Retry-After"), now),
                         explanation=explanation)


def _timestamp(value: Optional[datetime.datetime]) -> float:
    if value is None:  # acme's RFC 3339 fields are timezone-aware
        raise ValueError("the suggestedWindow lacks its start or end")
    return value.timestamp()
