"""The Vault connection: settings, login, KV v1/v2, retries and errors.

This is the only module that knows Vault's HTTP routes. Everything else talks
to :class:`VaultClient` in KV terms (``read``/``write``/``list``/``delete`` of
a path below the mount) and gets one :class:`VaultError` subclass per failure
kind, whose message is a single sentence safe to show a user: it never holds
a token, a secret id, a JWT or a secret value.
"""
from __future__ import annotations

import dataclasses
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
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("Retrying") and args
                    and str(args[-1]).startswith("/v1/"))


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
        return settings

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
                info = self._call(lambda: self._hvac.auth.token.lookup_self(),
                                  "auth/token/lookup-self", "read", login=True)
                data = info.get("data") or {}
                self._set_token_times(int(data.get("ttl") or 0), bool(data.get("renewable")))
            else:
                auth = self._call(self._login_request, f"auth/{self._login_mount()}/login",
                                  "update", login=True)["auth"]
                self._hvac.token = auth["client_token"]
                self._set_token_times(int(auth.get("lease_duration") or 0),
                                      bool(auth.get("renewable")))
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
                return fn()
            except hvac.exceptions.Forbidden as e:
                if login:
                    raise VaultPermissionDenied(_first_line(e)) from None
                # A 403 is either an expired token or a policy without the
                # capability. Machine logins get one fresh login; then ask
                # Vault which one it is.
                if not relogged and self.settings.auth_method != "token":
                    relogged = True
                    with self._lock:
                        self._login_locked()
                    continue
                if not self._token_is_valid():
                    raise VaultAuthError(
                        self._bad_credentials_message(self.settings.auth_method)) from None
                raise VaultPermissionDenied(
                    f"permission denied: needs {capability} on {path} (Vault at "
                    f"{self.settings.addr}); grant it in the token's policy "
                    "(see policies/ in the certbot-kvault docs).") from None
            except hvac.exceptions.Unauthorized:
                raise VaultAuthError(
                    self._bad_credentials_message(self.settings.auth_method)) from None
            except (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized) as e:
                raise VaultSealed(
                    f"Vault at {self.settings.addr} is sealed or not initialized ({_first_line(e)}"
                    "); unseal it (`vault operator unseal`) and run again.") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                raise self._transport_error(e) from None
            except hvac.exceptions.RateLimitExceeded:
                raise VaultError(
                    f"Vault at {self.settings.addr} kept answering 429 (rate limited) on {path} "
                    "after retries; lower --workers or run again later.") from None
            except hvac.exceptions.InvalidRequest as e:
                if login:
                    # Vault answers a bad role/secret id or JWT with a 400.
                    raise VaultPermissionDenied(_first_line(e)) from None
                raise VaultError(f"Vault rejected the request on {path}: {_first_line(e)}") \
                    from None
            except hvac.exceptions.VaultError as e:
                raise VaultError(
                    f"Vault error on {path} ({type(e).__name__}): {_first_line(e)}") from None

    def _transport_error(self, e: requests.exceptions.RequestException) -> VaultUnreachable:
        if isinstance(e, requests.exceptions.SSLError):
            reason = str(e).upper()
            if "CERTIFICATE_VERIFY_FAILED" in reason or "HOSTNAME" in reason:
                return VaultUnreachable(
                    f"TLS error talking to Vault at {self.settings.addr} (its certificate is "
                    "not trusted or names another host); set VAULT_CACERT to the CA that "
                    "signed Vault's certificate.")
            if any(alert in reason for alert in ("CERTIFICATE_REQUIRED", "CERTIFICATE REQUIRED",
                                                 "BAD_CERTIFICATE", "BAD CERTIFICATE",
                                                 "UNKNOWN_CA", "UNKNOWN CA")):
                return VaultUnreachable(
                    f"Vault at {self.settings.addr} refused our TLS client certificate (or "
                    "wants one); set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY to a certificate "
                    "its listener trusts.")
            return VaultUnreachable(
                f"TLS error talking to Vault at {self.settings.addr}; check VAULT_ADDR, "
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
            f"Cannot reach Vault at {self.settings.addr} ({type(e).__name__}); check "
            "VAULT_ADDR and that Vault is running.")

    def _token_is_valid(self) -> bool:
        try:
            self._hvac.auth.token.lookup_self()
            return True
        except hvac.exceptions.Forbidden:
            return False
        except Exception:  # noqa: BLE001 - unknown: report the original 403
            return True

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
                raise VaultNotFound(
                    f"KV mount '{mount}' not found or not visible to this token at "
                    f"{self.settings.addr}; set KVAULT_MOUNT (or --vault-mount) to your KV "
                    "mount.") from None
            except VaultError as e:
                if "no matching mount" in str(e) or "InvalidPath" in str(e):
                    raise VaultNotFound(
                        f"KV mount '{mount}' does not exist at {self.settings.addr}; enable it "
                        f"(`vault secrets enable -path={mount} kv-v2`) or set KVAULT_MOUNT.") \
                        from None
                raise
            data = (info or {}).get("data") or {}
            if data.get("type") not in ("kv", "generic", None):
                raise VaultUnsupported(
                    f"Mount '{mount}' is a {data.get('type')} engine, not KV; set KVAULT_MOUNT "
                    "to a KV mount.")
            version = str((data.get("options") or {}).get("version") or "1")
            self._kv_version = 2 if version == "2" else 1
        return self._kv_version

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
        resp = self._call(lambda: self._hvac.adapter.post(
            "/v1/sys/capabilities-self", json={"paths": paths}),
            "sys/capabilities-self", "update")
        data = (resp or {}).get("data") or resp or {}
        return {p: list(data.get(p) or []) for p in paths}

    def health(self) -> dict[str, Any]:
        """GET /v1/sys/health, with any status code (sealed is an answer, not an error)."""
        try:
            r = self._session.get(
                f"{self.settings.addr}/v1/sys/health",
                params={"standbyok": "true", "perfstandbyok": "true",
                        "sealedcode": "200", "uninitcode": "200"},
                # Explicit, or requests lets REQUESTS_CA_BUNDLE beat VAULT_CACERT.
                verify=self._session.verify, timeout=self.settings.timeout)
            return dict(r.json())
        except requests.exceptions.RequestException as e:
            raise self._transport_error(e) from None
        except ValueError:
            raise VaultUnreachable(
                f"{self.settings.addr} does not answer like Vault; check VAULT_ADDR.") from None

    def close(self) -> None:
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
