"""What can go wrong talking to Vault: one exception class per failure kind.

Every class is a :class:`certbot.errors.PluginError` whose message is one
sentence a user can act on and never holds a token, a secret id, a JWT or a
secret value. Also here: the check that an HTTP answer is Vault's at all (a
web page at VAULT_ADDR is :class:`VaultNotAnAPI`, not a traceback), and the
first line of hvac's error text that messages quote.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any, Iterable, Optional

import hvac.exceptions
import requests
from certbot import errors

from certbot_kvault._internal.vault.settings import VaultSettings


class VaultError(errors.PluginError):
    """A Vault operation failed; the message is one line a user can act on.

    ``said`` holds Vault's own ``errors`` list when Vault answered, so callers
    classify by what Vault said, never by our message's wording.
    """

    def __init__(self, message: str, *, said: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.said = tuple(str(x) for x in said)

    def vault_said(self, words: str) -> bool:
        """Did Vault's answer (its ``errors`` field) mention ``words``?"""
        return any(words in x for x in self.said)


class VaultUnreachable(VaultError):
    """No answer from Vault (connection refused, DNS, TLS, timeout)."""


class VaultSealed(VaultError):
    """Vault answered that it is sealed or not initialized."""


class VaultAuthError(VaultError):
    """No usable credentials, or the token is invalid or expired."""


class VaultPermissionDenied(VaultError):
    """The token is valid but its policies do not allow the operation."""


class VaultNotFound(VaultError):
    """The mount does not exist (a missing secret is not an error: reads return None)."""


class VaultConflict(VaultError):
    """A check-and-set write lost against a concurrent writer."""


class VaultUnsupported(VaultError):
    """The operation needs something this mount does not offer (e.g. CAS on KV v1)."""


class PolicyDenied(VaultPermissionDenied):
    """A given token's own lookup-self is denied by its policy: the token is valid."""


class VaultPathMissing(VaultError):
    """Vault answered 404 on a path: for KV, an absent secret or folder."""


class VaultNotAnAPI(VaultUnreachable):
    """Something answered at VAULT_ADDR, but not Vault (a web page, another API)."""



class NotVaultAnswer(Exception):
    """Raised from the session's response hook; VaultClient turns it into VaultNotAnAPI."""

    def __init__(self, status: int, content_type: str) -> None:
        super().__init__(f"HTTP {status}, {content_type}")
        self.status = status
        self.content_type = content_type


# Every JSON answer of Vault's API carries one of these (sys/health: "initialized").
VAULT_KEYS = frozenset(("request_id", "errors", "data", "auth", "initialized"))


def check_vault_answer(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Refuse an answer that is not Vault's before hvac reads it: a web page at
    VAULT_ADDR would otherwise be a traceback, or a 404 page a missing secret."""
    if response.is_redirect or response.status_code == 204 or not response.content:
        return
    content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
    if response.ok and "json" in content_type and response.content.lstrip()[:1] == b"{":
        return  # hvac parses it; VaultClient._call checks the object's keys
    parsed: Any = None
    if "json" in content_type:
        try:
            parsed = json.loads(response.content)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict) and VAULT_KEYS & parsed.keys():
        return
    raise NotVaultAnswer(response.status_code, content_type or "no content type")



def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    # hvac appends ", on get <url>": the URL is ours, not news to the user.
    return line.split(", on ")[0][:300]


# "certificate verify failed: <OpenSSL's reason> (_ssl.c:NNN)"
_VERIFY_REASON = re.compile(r"certificate verify failed: ([^()]+?) \(_ssl")


def transport_error(e: requests.exceptions.RequestException,
                    settings: VaultSettings) -> VaultUnreachable:
    """One sentence for a request that got no answer: TLS, a dead leader, or no Vault."""
    if isinstance(e, requests.exceptions.SSLError):
        reason = str(e).upper()
        if "CERTIFICATE_VERIFY_FAILED" in reason or "HOSTNAME" in reason:
            # OpenSSL's own words name the real cause when the CA is right but a
            # certificate breaks a rule (Python 3.13 checks X.509 strictly).
            said = _VERIFY_REASON.search(str(e))
            why = f": {said.group(1).strip()}" if said else ""
            return VaultUnreachable(
                f"TLS error talking to {settings.where} (its certificate is "
                f"not trusted or names another host{why}); set VAULT_CACERT to the CA that "
                "signed Vault's certificate.")
        if any(alert in reason for alert in ("CERTIFICATE_REQUIRED", "CERTIFICATE REQUIRED",
                                             "BAD_CERTIFICATE", "BAD CERTIFICATE",
                                             "UNKNOWN_CA", "UNKNOWN CA")):
            return VaultUnreachable(
                f"{settings.where} refused our TLS client certificate (or "
                "wants one); set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY to a certificate "
                "its listener trusts.")
        return VaultUnreachable(
            f"TLS error talking to {settings.where}; check VAULT_ADDR, "
            "VAULT_CACERT and VAULT_CLIENT_CERT.")
    failed = redirected_to(e, settings)
    if failed:
        # A standby redirected us to a leader that is gone: an HA cluster
        # in the middle of an election, not a wrong VAULT_ADDR.
        return VaultUnreachable(
            f"Vault at {settings.addr} sent us to its leader at {failed}, which does "
            f"not answer, and no new leader answered within {settings.ha_deadline:g}s "
            "(KVAULT_HA_DEADLINE); check the cluster's nodes (`bao operator raft "
            "list-peers`).")
    return VaultUnreachable(
        f"Cannot reach {settings.where} ({type(e).__name__}); check "
        "VAULT_ADDR and that Vault is running.")


def redirected_to(e: requests.exceptions.RequestException, settings: VaultSettings) -> str:
    """The host:port of another node that a request was redirected to and that did not
    answer, or "" when the request failed at VAULT_ADDR itself."""
    failed = urllib.parse.urlsplit(getattr(e.request, "url", None) or "").netloc
    return failed if failed and failed != urllib.parse.urlsplit(settings.addr).netloc else ""


# What a raft/HA node answers (500/503) while its cluster has no leader.
_LEADERLESS_WORDS = ("active cluster node not found", "node not active", "no leader",
                     "leadership lost", "not the leader")


def leaderless(e: BaseException) -> bool:
    """Did Vault answer that its cluster has no leader right now (an election)?"""
    said = getattr(e, "errors", None) or ()
    text = " ".join(str(x) for x in said).lower()
    return any(w in text for w in _LEADERLESS_WORDS)


def lost_race(where: str, ours: Optional[int], now: Optional[int]) -> VaultConflict:
    """A check-and-set write lost to a writer who saved something else (or deleted it)."""
    held = "nothing (deleted)" if now is None else f"KV version {now}"
    return VaultConflict(
        f"{where} changed in Vault while we were writing it: we wrote on top of KV "
        f"version {ours or 'none (new)'}, Vault now holds {held} with other content; "
        "run the command again.")


def no_leader(e: BaseException, settings: VaultSettings) -> VaultUnreachable:
    """A cluster that answered "no leader" for longer than KVAULT_HA_DEADLINE."""
    return VaultUnreachable(
        f"{settings.where} has had no leader for {settings.ha_deadline:g}s "
        f"(KVAULT_HA_DEADLINE) ({first_line(e)}); check that a quorum of the cluster's "
        "nodes runs (`bao operator raft list-peers`).")


def is_transient(e: BaseException) -> bool:
    """Vault down, sealed, or still answering 5xx after our retries: worth trying later."""
    if isinstance(e, (VaultUnreachable, VaultSealed)):
        return True
    return isinstance(e, VaultError) and isinstance(
        e.__context__, (hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway,
                        hvac.exceptions.VaultDown, hvac.exceptions.UnexpectedError))


def check_address(settings: VaultSettings) -> None:
    """Refuse an address that cannot be Vault's (requests would only say "No connection
    adapters were found"), naming the variable or option that gave it."""
    parts = urllib.parse.urlsplit(settings.addr)
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return
    rest = settings.addr.split("://", 1)[-1] or "vault.example.com:8200"
    raise VaultError(f"{settings.source('addr')} is {settings.addr!r}: Vault's address needs "
                     f"http:// or https:// (e.g. https://{rest}).")


def path_missing(e: hvac.exceptions.InvalidPath, path: str,
                 settings: VaultSettings) -> VaultError:
    """A 404 on ``path``: the namespace does not exist, or nothing is there."""
    if settings.namespace and "namespace not found" in " ".join(map(str, e.errors or ())):
        return namespace_missing(settings)
    return VaultPathMissing(f"Vault error on {path} ({type(e).__name__}): {first_line(e)}",
                            said=e.errors or ())


def mount_missing(settings: VaultSettings) -> VaultNotFound:
    """The KV mount does not exist (in the namespace, when one is set)."""
    mount, ns = settings.mount, settings.namespace
    if ns:
        return VaultNotFound(
            f"KV mount '{mount}' does not exist in namespace '{ns}' "
            f"({settings.source('namespace')}) at {settings.addr}; enable it there (`vault "
            f"secrets enable -namespace={ns} -path={mount} kv-v2`), or set "
            f"{settings.source('mount')} to your KV mount or {settings.source('namespace')} "
            "to its namespace.")
    return VaultNotFound(
        f"KV mount '{mount}' does not exist at {settings.addr}; enable it (`vault secrets "
        f"enable -path={mount} kv-v2`) or set {settings.source('mount')} to your KV mount.")


def namespace_missing(settings: VaultSettings) -> VaultNotFound:
    """Vault answered "namespace not found" for VAULT_NAMESPACE."""
    ns, var = settings.namespace, settings.source("namespace")
    return VaultNotFound(
        f"Namespace '{ns}' ({var}) does not exist at {settings.addr}; create it (`vault "
        f"namespace create {ns}`) or set {var} to an existing namespace.")
