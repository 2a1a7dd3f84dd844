"""The Vault connection: settings, login, KV v1/v2, retries and errors.

This is the only module that knows Vault's HTTP routes. Everything else talks
to :class:`VaultClient` in KV terms (``read``/``write``/``list``/``delete`` of
a path below the mount) and gets one :class:`VaultError` subclass per failure
kind, whose message is a single sentence safe to show a user: it never holds
a token, a secret id, a JWT or a secret value.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import urllib.parse
from typing import Any, Callable, Mapping, Optional, TypeVar

import hvac
import hvac.exceptions
import requests
import requests.adapters
import requests.utils
from certbot import errors
from urllib3.util.retry import Retry

from certbot_kvault._internal import redact  # noqa: F401 - installs the URL log filter

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ADDR = "https://127.0.0.1:8200"
DEFAULT_MOUNT = "secret"
DEFAULT_PREFIX = "certbot"
DEFAULT_K8S_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105


class _QuietVaultRetries(logging.Filter):
    """Drop urllib3's per-retry warnings for Vault routes (/v1/...): the final
    error is reported once, in our words. Other clients' retries still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Retrying"):
            return True
        # The rendered line: the redaction filter may already have folded the args in.
        return not record.getMessage().rsplit(": ", 1)[-1].startswith("/v1/")


logging.getLogger("urllib3.connectionpool").addFilter(_QuietVaultRetries())


class VaultError(errors.PluginError):
    """A Vault operation failed; the message is one line a user can act on."""


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


class _PolicyDenied(VaultPermissionDenied):
    """A given token's own lookup-self is denied by its policy: the token is valid."""


class VaultNotAnAPI(VaultUnreachable):
    """Something answered at VAULT_ADDR, but not Vault (a web page, another API)."""


class _NotVaultAnswer(Exception):
    """Raised from the session's response hook; VaultClient turns it into VaultNotAnAPI."""

    def __init__(self, status: int, content_type: str) -> None:
        super().__init__(f"HTTP {status}, {content_type}")
        self.status = status
        self.content_type = content_type


# Every JSON answer of Vault's API carries one of these (sys/health: "initialized").
_VAULT_KEYS = frozenset(("request_id", "errors", "data", "auth", "initialized"))


def _check_vault_answer(response: requests.Response, *args: Any, **kwargs: Any) -> None:
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
    if isinstance(parsed, dict) and _VAULT_KEYS & parsed.keys():
        return
    raise _NotVaultAnswer(response.status_code, content_type or "no content type")


def _env_bool(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass
class VaultSettings:
    """How to reach and log in to Vault; read like the ``vault`` CLI reads them."""

    addr: str = DEFAULT_ADDR
    token: Optional[str] = dataclasses.field(default=None, repr=False)
    namespace: Optional[str] = None
    cacert: Optional[str] = None
    capath: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    skip_verify: bool = False
    role_id: Optional[str] = None
    secret_id: Optional[str] = dataclasses.field(default=None, repr=False)
    approle_mount: str = "approle"
    k8s_role: Optional[str] = None
    k8s_token_path: str = DEFAULT_K8S_TOKEN_PATH
    k8s_mount: str = "kubernetes"
    jwt_role: Optional[str] = None
    jwt: Optional[str] = dataclasses.field(default=None, repr=False)
    jwt_file: Optional[str] = None
    jwt_mount: str = "jwt"
    mount: str = DEFAULT_MOUNT
    prefix: str = DEFAULT_PREFIX
    timeout: float = 30.0
    retries: int = 4
    # True when from_env found no address anywhere and fell back to DEFAULT_ADDR.
    addr_is_default: bool = False

    # Each field, the variable that sets it; the same names as the vault CLI
    # where the vault CLI has one.
    ENV: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
        "addr": "VAULT_ADDR",
        "token": "VAULT_TOKEN",
        "namespace": "VAULT_NAMESPACE",
        "cacert": "VAULT_CACERT",
        "capath": "VAULT_CAPATH",
        "client_cert": "VAULT_CLIENT_CERT",
        "client_key": "VAULT_CLIENT_KEY",
        "skip_verify": "VAULT_SKIP_VERIFY",
        "role_id": "VAULT_ROLE_ID",
        "secret_id": "VAULT_SECRET_ID",
        "approle_mount": "KVAULT_APPROLE_MOUNT",
        "k8s_role": "KVAULT_K8S_ROLE",
        "k8s_token_path": "KVAULT_K8S_TOKEN_PATH",
        "k8s_mount": "KVAULT_K8S_MOUNT",
        "jwt_role": "KVAULT_JWT_ROLE",
        "jwt": "KVAULT_JWT",
        "jwt_file": "KVAULT_JWT_FILE",
        "jwt_mount": "KVAULT_JWT_MOUNT",
        "mount": "KVAULT_MOUNT",
        "prefix": "KVAULT_PREFIX",
    }, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None,
                 **overrides: Any) -> VaultSettings:
        """Settings from the environment; non-None ``overrides`` win (CLI options)."""
        env = os.environ if environ is None else environ
        settings = cls()
        for name, var in settings.ENV.items():
            value: Any = env.get(var)
            if value in (None, ""):
                continue
            if name == "skip_verify":
                value = _env_bool(value)
            setattr(settings, name, value)
        for name, value in overrides.items():
            if value is not None and value != "":
                setattr(settings, name, value)
        settings.mount = settings.mount.strip("/")
        settings.prefix = settings.prefix.strip("/")
        settings.addr = settings.addr.rstrip("/")
        settings.addr_is_default = (env.get("VAULT_ADDR") in (None, "")
                                    and overrides.get("addr") in (None, ""))
        return settings

    @property
    def where(self) -> str:
        """'Vault at ADDR', saying so when ADDR is only the default."""
        if self.addr_is_default:
            return (f"Vault at {self.addr} (the default address, used because VAULT_ADDR "
                    "is not set)")
        return f"Vault at {self.addr}"

    @property
    def auth_method(self) -> str:
        """Which login to use: the first one configured, token last (as a fallback)."""
        if self.role_id:
            return "approle"
        if self.jwt_role:
            return "jwt"
        if self.k8s_role:
            return "kubernetes"
        return "token"

    def file_token(self) -> Optional[str]:
        """The token the vault CLI would use when VAULT_TOKEN is unset."""
        path = os.path.join(os.path.expanduser("~"), ".vault-token")
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError:
            return None


@dataclasses.dataclass
class KVEntry:
    """One secret as read: its fields and, on KV v2, its version number."""

    data: dict[str, Any]
    version: Optional[int]


class _ConsistencyIndex:
    """Client-controlled consistency on HA clusters (OpenBao's ``X-Vault-Index``).

    Standbys answer reads from their own, slightly lagging copy. Every answer
    carries the storage index it reflects; sending the newest one we have seen
    back makes a standby answer only once it has caught up, or forward to the
    leader (``X-Vault-Inconsistent: forward-active-node``). So a read
    after our own write, or after a lost check-and-set race against another
    renewer (whose answer carries the leader's newer index), sees that write.
    Servers that send no index get none back.
    """

    def __init__(self, session: requests.Session) -> None:
        self._session = session
        self._lock = threading.Lock()
        self._value = -1

    def seen(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        header = response.headers.get("X-Vault-Index")
        if not header:
            return
        value = _index_value(header)
        with self._lock:
            if value >= self._value:
                self._value = value
                self._session.headers["X-Vault-Index"] = header
                # A standby that has not caught up forwards to the leader
                # rather than answering 429 (it can lag seconds under load).
                self._session.headers["X-Vault-Inconsistent"] = "forward-active-node"


def _index_value(header: str) -> int:
    import base64
    import json

    try:
        padded = header + "=" * (-len(header) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["value"])
    except (ValueError, KeyError, TypeError):
        return 0  # opaque to us: still the newest we have seen


def _make_session(settings: VaultSettings, pool_size: int) -> requests.Session:
    session = requests.Session()
    session.hooks["response"].append(_check_vault_answer)
    session.hooks["response"].append(_ConsistencyIndex(session).seen)
    # Connection errors are retried for every method (nothing reached Vault);
    # 5xx/429 answers too, with backoff (503 included: a raft cluster answers
    # it while electing a leader; a sealed Vault costs a few seconds more).
    # A retried CAS write that had in fact landed surfaces as a conflict,
    # which VaultClient.write resolves by reading back.
    retry = Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=0.2,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = requests.adapters.HTTPAdapter(
        max_retries=retry, pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # requests would re-read proxy and CA variables from the environment on
    # every request (a third of a loopback request's time): read them once.
    session.proxies = requests.utils.get_environ_proxies(settings.addr)
    session.trust_env = False
    # hvac ignores its own verify= when given a session: set it here (RIG.md).
    if settings.skip_verify:
        session.verify = False
    elif settings.cacert:
        session.verify = settings.cacert
    elif settings.capath:
        session.verify = settings.capath
    else:
        session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                          or os.environ.get("CURL_CA_BUNDLE") or True)
    if settings.client_cert:
        session.cert = (settings.client_cert, settings.client_key) \
            if settings.client_key else settings.client_cert
    return session


class VaultClient:
    """A logged-in connection to one KV mount.

    Thread-safe for the KV operations (one kept-alive pool shared by the
    workers of a parallel pull/push).
    """

    def __init__(self, settings: VaultSettings, pool_size: int = 16) -> None:
        self.settings = settings
        self._session = _make_session(settings, pool_size)
        verify: Any = self._session.verify
        self._hvac = hvac.Client(
            url=settings.addr, namespace=settings.namespace, session=self._session,
            timeout=settings.timeout, verify=verify)
        self._lock = threading.Lock()
        self._kv_version: Optional[int] = None
        self._token_expires_at: Optional[float] = None
        self._token_ttl: int = 0
        self._token_renewable = False
        self._logged_in = False
        # True only for a token we got from a machine login: ours to revoke.
        self._own_token = False

    # ---- connection and login -------------------------------------------

    def login(self) -> None:
        """Log in with the configured method (no-op once logged in)."""
        with self._lock:
            if not self._logged_in:
                self._login_locked()

    def _login_locked(self) -> None:
        s = self.settings
        method = s.auth_method
        try:
            if method == "token":
                token = s.token or s.file_token()
                if not token:
                    raise VaultAuthError(
                        "No Vault credentials: set VAULT_TOKEN (or log in with `vault login` so "
                        "~/.vault-token exists), or VAULT_ROLE_ID/VAULT_SECRET_ID for AppRole, "
                        "KVAULT_K8S_ROLE for Kubernetes, KVAULT_JWT_ROLE for JWT.")
                self._hvac.token = token
                try:
                    info = self._call(lambda: self._hvac.auth.token.lookup_self(),
                                      "auth/token/lookup-self", "read", login=True)
                except _PolicyDenied:
                    # A valid token whose policy denies lookup-self (a deny rule,
                    # or no_default_policy): usable, its TTL just unknown.
                    logger.debug("The token may not look itself up; its TTL is unknown")
                    info = {}
                data = info.get("data") or {}
                self._set_token_times(int(data.get("ttl") or 0), bool(data.get("renewable")))
                self._own_token = False
            else:
                auth = self._call(self._login_request, f"auth/{self._login_mount()}/login",
                                  "update", login=True)["auth"]
                self._hvac.token = auth["client_token"]
                self._set_token_times(int(auth.get("lease_duration") or 0),
                                      bool(auth.get("renewable")))
                self._own_token = True
        except VaultPermissionDenied as e:
            raise VaultAuthError(self._bad_credentials_message(method, str(e))) from None
        self._logged_in = True
        logger.debug("Logged in to Vault at %s with %s auth", s.addr, method)

    def _login_mount(self) -> str:
        s = self.settings
        return {"approle": s.approle_mount, "kubernetes": s.k8s_mount,
                "jwt": s.jwt_mount}.get(s.auth_method, "token")

    def _login_request(self) -> Any:
        s = self.settings
        method = s.auth_method
        if method == "approle":
            return self._hvac.auth.approle.login(
                role_id=s.role_id, secret_id=s.secret_id, use_token=False,
                mount_point=s.approle_mount)
        if method == "kubernetes":
            jwt = _read_secret_file(s.k8s_token_path, "Kubernetes service-account token",
                                    "KVAULT_K8S_TOKEN_PATH")
            return self._hvac.auth.kubernetes.login(
                role=s.k8s_role, jwt=jwt, use_token=False, mount_point=s.k8s_mount)
        token: Optional[str] = s.jwt or (
            _read_secret_file(s.jwt_file, "JWT", "KVAULT_JWT_FILE") if s.jwt_file else None)
        if not token:
            raise VaultAuthError(
                "KVAULT_JWT_ROLE is set but no JWT was given: set KVAULT_JWT or KVAULT_JWT_FILE "
                "(e.g. the CI job's ID token).")
        return self._hvac.auth.jwt.jwt_login(role=s.jwt_role, jwt=token, use_token=False,
                                             path=s.jwt_mount)

    def _bad_credentials_message(self, method: str, reason: str = "") -> str:
        """One sentence; ``reason`` is Vault's own words (which never echo a credential)."""
        s = self.settings
        if method == "token":
            return (f"Vault at {s.addr} rejected the token: it is invalid or expired. "
                    "Set VAULT_TOKEN to a valid token (or run `vault login`).")
        what = {"approle": f"AppRole login (auth/{s.approle_mount}): check VAULT_ROLE_ID "
                           "and VAULT_SECRET_ID",
                "kubernetes": f"Kubernetes login (auth/{s.k8s_mount}, role {s.k8s_role}): "
                              "check the role's bound service accounts",
                "jwt": f"JWT login (auth/{s.jwt_mount}, role {s.jwt_role}): check the role's "
                       "bound claims and the token's audience"}[method]
        said = f" (Vault said: {reason})" if reason and reason != "permission denied" else ""
        return f"Vault at {s.addr} refused the {what}{said}."

    def _set_token_times(self, ttl: int, renewable: bool) -> None:
        self._token_ttl = ttl
        self._token_renewable = renewable
        self._token_expires_at = time.monotonic() + ttl if ttl > 0 else None

    def _maybe_renew_token(self) -> None:
        """Keep a long run alive: renew (or log in again) past two thirds of the TTL."""
        if self._token_expires_at is None:
            return
        remaining = self._token_expires_at - time.monotonic()
        if remaining > self._token_ttl / 3:
            return
        with self._lock:
            remaining = (self._token_expires_at or 0) - time.monotonic()
            if self._token_expires_at is None or remaining > self._token_ttl / 3:
                return
            if self._token_renewable:
                try:
                    auth = self._hvac.auth.token.renew_self()["auth"]
                    self._set_token_times(int(auth.get("lease_duration") or 0),
                                          bool(auth.get("renewable")))
                    logger.debug("Renewed the Vault token")
                    return
                except Exception as e:  # noqa: BLE001 - fall back to a fresh login
                    logger.debug("Token renewal failed (%s)", type(e).__name__)
            if self.settings.auth_method != "token":
                self._login_locked()

    # ---- the request wrapper: every Vault call goes through here ---------

    def _call(self, fn: Callable[[], T], path: str, capability: str,
              login: bool = False) -> T:
        if not login:
            if not self._logged_in:
                self.login()
            self._maybe_renew_token()
        relogged = False
        while True:
            try:
                result = fn()
            except _NotVaultAnswer as e:
                raise self._not_an_api(e) from None
            except hvac.exceptions.Forbidden as e:
                if login:
                    # The login itself, or a given token's lookup-self: only an
                    # ACL answer means the credential is good.
                    if self.settings.auth_method == "token" and _forbidden_verdict(e) is False:
                        raise _PolicyDenied(self._denied_message(capability, path)) from None
                    raise VaultPermissionDenied(_first_line(e)) from None
                if self._token_rejected(e):
                    # An expired machine token: one fresh login, then retry.
                    if not relogged and self.settings.auth_method != "token":
                        relogged = True
                        with self._lock:
                            self._login_locked()
                        continue
                    raise VaultAuthError(
                        self._bad_credentials_message(self.settings.auth_method)) from None
                raise VaultPermissionDenied(self._denied_message(capability, path)) from None
            except hvac.exceptions.Unauthorized:
                raise VaultAuthError(
                    self._bad_credentials_message(self.settings.auth_method)) from None
            except (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized) as e:
                raise VaultSealed(
                    f"{self.settings.where} is sealed or not initialized ({_first_line(e)}"
                    "); unseal it (`vault operator unseal`) and run again.") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                raise self._transport_error(e) from None
            except hvac.exceptions.RateLimitExceeded:
                raise VaultError(
                    f"{self.settings.where} kept answering 429 (rate limited) on {path} "
                    "after retries; lower certbot-kvault's --workers or run again later.") from None
            except hvac.exceptions.InvalidRequest as e:
                if login:
                    # Vault answers a bad role/secret id or JWT with a 400.
                    raise VaultPermissionDenied(_first_line(e)) from None
                raise VaultError(f"Vault rejected the request on {path}: {_first_line(e)}") \
                    from None
            except hvac.exceptions.VaultError as e:
                raise VaultError(
                    f"Vault error on {path} ({type(e).__name__}): {_first_line(e)}") from None
            if isinstance(result, requests.Response) and result.status_code == 200:
                # hvac hands back the raw answer when a 200 is not JSON.
                raise self._not_an_api(_NotVaultAnswer(
                    200, result.headers.get("Content-Type") or "no content type"))
            if isinstance(result, dict) and not _VAULT_KEYS & result.keys():
                raise self._not_an_api(_NotVaultAnswer(200, "application/json"))
            return result

    def _denied_message(self, capability: str, path: str) -> str:
        return (f"permission denied: needs {capability} on {path} ({self.settings.where}); "
                "grant it in the token's policy (see policies/ in the certbot-kvault docs).")

    def _not_an_api(self, e: _NotVaultAnswer) -> VaultNotAnAPI:
        return VaultNotAnAPI(
            f"The server at {self.settings.addr} does not look like a Vault API "
            f"({e}){self._default_note()}; check VAULT_ADDR.")

    def _default_note(self) -> str:
        return (" (the default address, used because VAULT_ADDR is not set)"
                if self.settings.addr_is_default else "")

    def _token_rejected(self, e: hvac.exceptions.Forbidden) -> bool:
        """Is this 403 about the token itself (invalid, expired, revoked, absent)?

        OpenBao and Vault answer a token they do not know with a bare
        "permission denied" (newer Vault adds "invalid token"), and a policy
        that lacks a capability with the ACL check's multi-error ("1 error
        occurred: * permission denied"), or "preflight capability check" on
        sys/internal/ui/mounts. When the answer is a bare one, lookup-self
        decides: it costs one request, where a needless fresh login would
        spend an AppRole secret id's use.
        """
        verdict = _forbidden_verdict(e)
        if verdict is not None:
            return verdict
        try:
            self._hvac.auth.token.lookup_self()
            return False
        except hvac.exceptions.Forbidden as again:
            return _forbidden_verdict(again) is not False
        except hvac.exceptions.Unauthorized:
            return True
        except Exception:  # noqa: BLE001 - cannot tell: keep the original 403 a denial
            return False

    def _transport_error(self, e: requests.exceptions.RequestException) -> VaultUnreachable:
        if isinstance(e, requests.exceptions.SSLError):
            reason = str(e).upper()
            if "CERTIFICATE_VERIFY_FAILED" in reason or "HOSTNAME" in reason:
                return VaultUnreachable(
                    f"TLS error talking to {self.settings.where} (its certificate is "
                    "not trusted or names another host); set VAULT_CACERT to the CA that "
                    "signed Vault's certificate.")
            if any(alert in reason for alert in ("CERTIFICATE_REQUIRED", "CERTIFICATE REQUIRED",
                                                 "BAD_CERTIFICATE", "BAD CERTIFICATE",
                                                 "UNKNOWN_CA", "UNKNOWN CA")):
                return VaultUnreachable(
                    f"{self.settings.where} refused our TLS client certificate (or "
                    "wants one); set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY to a certificate "
                    "its listener trusts.")
            return VaultUnreachable(
                f"TLS error talking to {self.settings.where}; check VAULT_ADDR, "
                "VAULT_CACERT and VAULT_CLIENT_CERT.")
        failed = urllib.parse.urlsplit(getattr(e.request, "url", None) or "").netloc
        if failed and failed != urllib.parse.urlsplit(self.settings.addr).netloc:
            # A standby redirected us to a leader that is gone: an HA cluster
            # in the middle of an election, not a wrong VAULT_ADDR.
            return VaultUnreachable(
                f"Vault at {self.settings.addr} sent us to its leader at {failed}, which does "
                "not answer; the cluster is probably electing a new leader: run again in a "
                "few seconds.")
        return VaultUnreachable(
            f"Cannot reach {self.settings.where} ({type(e).__name__}); check "
            "VAULT_ADDR and that Vault is running.")

    # ---- KV ----------------------------------------------------------------

    @property
    def mount(self) -> str:
        return self.settings.mount

    @property
    def kv_version(self) -> int:
        """1 or 2, asked once (GET /v1/sys/internal/ui/mounts/{mount}, as `vault kv` does)."""
        if self._kv_version is None:
            mount = self.settings.mount
            try:
                info = self._call(
                    lambda: self._hvac.adapter.get(f"/v1/sys/internal/ui/mounts/{mount}"),
                    f"sys/internal/ui/mounts/{mount}", "read")
            except VaultPermissionDenied:
                # Vault shows a mount only to a token with some capability below
                # it, and to nobody when it does not exist.
                raise self._mount_not_visible() from None
            except VaultError as e:
                if "no matching mount" in str(e) or "InvalidPath" in str(e):
                    raise self._mount_missing() from None
                raise
            data = (info or {}).get("data") or {}
            if data.get("type") not in ("kv", "generic", None):
                raise VaultUnsupported(
                    f"Mount '{mount}' is a {data.get('type')} engine, not KV; set KVAULT_MOUNT "
                    "to a KV mount.")
            version = str((data.get("options") or {}).get("version") or "1")
            self._kv_version = 2 if version == "2" else 1
        return self._kv_version

    def _mount_missing(self) -> VaultNotFound:
        mount = self.settings.mount
        return VaultNotFound(
            f"KV mount '{mount}' does not exist at {self.settings.addr}; enable it "
            f"(`vault secrets enable -path={mount} kv-v2`) or set KVAULT_MOUNT to your KV "
            "mount.")

    def _mount_not_visible(self) -> VaultError:
        """Tell a missing mount from a token without rights below it.

        A read below the mount answers 404 "no handler for route" when the
        mount does not exist and the token may read there (root, or a policy
        written for the mount to come); a 403 when the token may not.
        """
        mount, prefix = self.settings.mount, self.settings.prefix
        try:
            self._hvac.adapter.get(f"/v1/{mount}/data/{prefix}")
        except hvac.exceptions.InvalidPath as e:
            said = " ".join(str(x) for x in (e.errors or []))
            if "no handler for route" in said or "unsupported path" in said:
                return self._mount_missing()
        except Exception:  # noqa: BLE001 - the probe only refines the message below
            logger.debug("mount probe failed", exc_info=True)
        return VaultPermissionDenied(
            f"permission denied: needs read on {mount}/data/{prefix}/* (KV v1: "
            f"{mount}/{prefix}/*) ({self.settings.where}): this token has no capability "
            f"below mount '{mount}', or that mount does not exist; grant it in the token's "
            "policy, or set KVAULT_MOUNT to your KV mount.")

    def api_path(self, path: str, kind: str = "data") -> str:
        """The ACL path a policy must grant for ``path`` (used in messages and `status`)."""
        if self.kv_version == 2:
            return f"{self.settings.mount}/{kind}/{path}"
        return f"{self.settings.mount}/{path}"

    def read(self, path: str) -> Optional[KVEntry]:
        """Read a secret, None if absent or deleted.

        GET /v1/{mount}/data/{path} (v2) or GET /v1/{mount}/{path} (v1).
        """
        mount = self.settings.mount
        try:
            if self.kv_version == 2:
                resp = self._call(
                    lambda: self._hvac.secrets.kv.v2.read_secret_version(
                        path=path, mount_point=mount, raise_on_deleted_version=False),
                    self.api_path(path), "read")
                data = resp.get("data") or {}
                if data.get("data") is None:
                    return None
                return KVEntry(dict(data["data"]), int(data["metadata"]["version"]))
            resp = self._call(
                lambda: self._hvac.secrets.kv.v1.read_secret(path=path, mount_point=mount),
                self.api_path(path), "read")
            return KVEntry(dict(resp.get("data") or {}), None)
        except VaultError as e:
            if _is_not_found(e):
                return None
            raise

    def current_version(self, path: str) -> Optional[int]:
        """The latest version number of a KV v2 secret, deleted or not; None if absent.

        GET /v1/{mount}/metadata/{path}. (A soft-deleted secret still has one:
        check-and-set must name it.)
        """
        if self.kv_version != 2:
            return None
        mount = self.settings.mount
        try:
            resp = self._call(lambda: self._hvac.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=mount), self.api_path(path, "metadata"), "read")
        except VaultError as e:
            if _is_not_found(e):
                return None
            raise
        data = (resp or {}).get("data") or {}
        try:
            return int(data.get("current_version") or 0) or None
        except (TypeError, ValueError):
            return None

    def write(self, path: str, data: Mapping[str, Any], cas: Optional[int] = None) -> \
            Optional[int]:
        """Write a whole secret; on v2 with ``cas`` (0 = must not exist) as check-and-set.

        POST /v1/{mount}/data/{path} (v2) or POST /v1/{mount}/{path} (v1).
        Returns the new version on v2.
        """
        mount = self.settings.mount
        capability = "create/update"
        if self.kv_version == 2:
            try:
                resp = self._call(
                    lambda: self._hvac.secrets.kv.v2.create_or_update_secret(
                        path=path, secret=dict(data), cas=cas, mount_point=mount),
                    self.api_path(path), capability)
            except VaultError as e:
                if cas is not None and "check-and-set" in str(e):
                    # A retried write that had landed looks like a lost race:
                    # it is ours if Vault now holds exactly what we sent.
                    current = self.read(path)
                    if current is not None and current.data == dict(data):
                        return current.version
                    raise VaultConflict(
                        f"{self.api_path(path)} changed in Vault while we were writing it "
                        "(check-and-set failed); run the command again.") from None
                raise
            return int(((resp or {}).get("data") or {}).get("version") or 0) or None
        self._call(lambda: self._hvac.secrets.kv.v1.create_or_update_secret(
            path=path, secret=dict(data), mount_point=mount), self.api_path(path), capability)
        return None

    def list_keys(self, path: str) -> list[str]:
        """Keys below ``path`` (folders end in '/'); [] if none.

        LIST /v1/{mount}/metadata/{path} (v2) or LIST /v1/{mount}/{path} (v1).
        """
        mount = self.settings.mount
        try:
            if self.kv_version == 2:
                resp = self._call(lambda: self._hvac.secrets.kv.v2.list_secrets(
                    path=path, mount_point=mount), self.api_path(path, "metadata"), "list")
            else:
                resp = self._call(lambda: self._hvac.secrets.kv.v1.list_secrets(
                    path=path, mount_point=mount), self.api_path(path), "list")
        except VaultError as e:
            if _is_not_found(e):
                return []
            raise
        return list(((resp or {}).get("data") or {}).get("keys") or [])

    def delete(self, path: str, purge: bool = False) -> None:
        """Delete a secret: v2 soft-deletes the latest version, or all versions with ``purge``.

        DELETE /v1/{mount}/data/{path}, /v1/{mount}/metadata/{path} (purge) or
        /v1/{mount}/{path} (v1).
        """
        mount = self.settings.mount
        if self.kv_version == 2:
            if purge:
                self._call(lambda: self._hvac.secrets.kv.v2.delete_metadata_and_all_versions(
                    path=path, mount_point=mount), self.api_path(path, "metadata"), "delete")
            else:
                self._call(lambda: self._hvac.secrets.kv.v2.delete_latest_version_of_secret(
                    path=path, mount_point=mount), self.api_path(path), "delete")
            return
        self._call(lambda: self._hvac.secrets.kv.v1.delete_secret(path=path, mount_point=mount),
                   self.api_path(path), "delete")

    # ---- introspection for `status` -----------------------------------------

    def whoami(self) -> dict[str, Any]:
        """What the token is (never its id). GET /v1/auth/token/lookup-self."""
        data = self._call(lambda: self._hvac.auth.token.lookup_self(),
                          "auth/token/lookup-self", "read").get("data") or {}
        return {k: data.get(k) for k in ("display_name", "policies", "ttl", "renewable",
                                         "entity_id", "path")}

    def capabilities(self, paths: list[str]) -> dict[str, list[str]]:
        """The token's capabilities on ACL paths. POST /v1/sys/capabilities-self."""
        resp = self._call(lambda: self._hvac.sys.get_capabilities(paths),
                          "sys/capabilities-self", "update")
        data = (resp or {}).get("data") or resp or {}
        return {p: list(data.get(p) or []) for p in paths}

    def health(self) -> dict[str, Any]:
        """GET /v1/sys/health, with any status code (sealed is an answer, not an error)."""
        try:
            resp = self._hvac.sys.read_health_status(
                method="GET", standby_ok=True, performance_standby_code=200,
                sealed_code=200, uninit_code=200)
        except _NotVaultAnswer as e:
            raise self._not_an_api(e) from None
        except requests.exceptions.RequestException as e:
            raise self._transport_error(e) from None
        except hvac.exceptions.VaultError as e:
            raise VaultError(f"{self.settings.where} answered sys/health with "
                             f"{type(e).__name__}: {_first_line(e)}") from None
        if isinstance(resp, dict):
            if "initialized" not in resp:
                raise self._not_an_api(_NotVaultAnswer(200, "application/json"))
            return resp
        # Another status than the ones asked for (e.g. a DR secondary's 472) still
        # carries the health document; the response hook has checked its shape.
        try:
            return dict(resp.json())
        except ValueError:
            raise self._not_an_api(_NotVaultAnswer(
                resp.status_code, resp.headers.get("Content-Type") or "no content type")) \
                from None

    def close(self) -> None:
        """End the connection; a token from a machine login is revoked first.

        A token the user gave (VAULT_TOKEN, ~/.vault-token) is theirs and
        stays; ours would otherwise live on, unused, until its TTL ends.
        """
        if self._own_token and self._logged_in:
            try:
                self._hvac.auth.token.revoke_self()
                logger.debug("Revoked the token of this run's %s login",
                             self.settings.auth_method)
            except Exception as e:  # noqa: BLE001 - best effort; it expires anyway
                logger.debug("Could not revoke this run's token (%s)", type(e).__name__)
            self._own_token = False
            self._logged_in = False
            self._hvac.token = None
        self._session.close()


def _read_secret_file(path: Optional[str], what: str, var: str) -> str:
    if not path:
        raise VaultAuthError(f"No {what} file given; set {var}.")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        raise VaultAuthError(f"Cannot read the {what} at {path} ({e.strerror}); set {var}.") \
            from None
    if not value:
        raise VaultAuthError(f"The {what} file {path} is empty; set {var}.")
    return value


def _forbidden_verdict(e: hvac.exceptions.Forbidden) -> Optional[bool]:
    """From Vault's answer alone: True = the token is rejected, False = a policy
    denial of a valid token, None = a bare "permission denied" (either)."""
    said = " ".join(str(x) for x in (e.errors or [])).lower()
    if "invalid token" in said:
        return True
    if "error occurred" in said or "errors occurred" in said or "preflight capability" in said:
        return False
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    # hvac appends ", on get <url>": the URL is ours, not news to the user.
    return line.split(", on ")[0][:300]


def _is_not_found(e: VaultError) -> bool:
    cause = e.__context__
    return isinstance(cause, hvac.exceptions.InvalidPath) or "InvalidPath" in str(e)


def is_transient(e: BaseException) -> bool:
    """Vault down, sealed, or still answering 5xx after our retries: worth trying later."""
    if isinstance(e, (VaultUnreachable, VaultSealed)):
        return True
    return isinstance(e, VaultError) and isinstance(
        e.__context__, (hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway,
                        hvac.exceptions.VaultDown, hvac.exceptions.UnexpectedError))
