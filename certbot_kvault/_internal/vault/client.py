"""The Vault client: KV v1/v2, the request wrapper and its error mapping.

This is the only module that knows Vault's KV and sys HTTP routes. Its
:class:`VaultClient` owns the request wrapper through which every call goes and
that turns each failure into one :mod:`~certbot_kvault._internal.vault.errors` class,
and the KV operations everything else talks in (``read``/``write``/``list_keys``/
``delete`` below the mount), plus the introspection calls of `status`. Settings come from
:mod:`~certbot_kvault._internal.vault.settings`, logins from
:mod:`~certbot_kvault._internal.vault.auth`, the HTTP session (TLS, retries, HA
consistency) from :mod:`~certbot_kvault._internal.vault.session`.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Optional, TypeVar

import hvac
import hvac.exceptions
import requests

from certbot_kvault._internal.vault import redact  # noqa: F401 - installs the URL log filter
from certbot_kvault._internal.vault.auth import Auth, forbidden_verdict
from certbot_kvault._internal.vault.errors import (
    VAULT_KEYS,
    NotVaultAnswer,
    PolicyDenied,
    VaultAuthError,
    VaultConflict,
    VaultError,
    VaultNotAnAPI,
    VaultPathMissing,
    VaultPermissionDenied,
    VaultSealed,
    VaultUnsupported,
    check_address,
    first_line,
    leaderless,
    mount_missing,
    no_leader,
    path_missing,
    redirected_to,
    transport_error,
)
from certbot_kvault._internal.vault.session import LeaderWait, make_session
from certbot_kvault._internal.vault.settings import VaultSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class KVEntry:
    """One secret as read: its fields and, on KV v2, its version number."""

    data: dict[str, Any]
    version: Optional[int]


class VaultClient:
    """A logged-in connection to one KV mount.

    Thread-safe for the KV operations (one kept-alive pool shared by the
    workers of a parallel pull/push).
    """

    def __init__(self, settings: VaultSettings, pool_size: int = 16) -> None:
        check_address(settings)
        self.settings = settings
        self._session, self._direct = make_session(settings, pool_size)
        # `with at_leader():` this thread's requests go to the active node (the locks').
        self.at_leader = self._session.index.at_leader
        verify: Any = self._session.verify
        self._hvac = hvac.Client(
            url=settings.addr, namespace=settings.namespace, session=self._session,
            timeout=settings.timeout, verify=verify)
        self._auth = Auth(settings, self._hvac, self._call)
        self._kv_version: Optional[int] = None

    def login(self) -> None:
        """Log in with the configured method (no-op once logged in)."""
        self._auth.login()

    # ---- the request wrapper: every Vault call goes through here ---------

    def _call(self, fn: Callable[[], T], path: str, capability: str,
              login: bool = False) -> T:
        if not login:
            if not self._auth.logged_in:
                self._auth.login()
            self._auth.maybe_renew()
        relogged = False
        election = LeaderWait(self.settings.ha_deadline)
        while True:
            try:
                result = fn()
            except NotVaultAnswer as e:
                raise self._not_an_api(e) from None
            except hvac.exceptions.Forbidden as e:
                if login:
                    # The login itself, or a given token's lookup-self: only an
                    # ACL answer means the credential is good.
                    if self.settings.auth_method == "token" and forbidden_verdict(e) is False:
                        raise PolicyDenied(self._denied_message(capability, path)) from None
                    raise VaultPermissionDenied(first_line(e)) from None
                if self._auth.token_rejected(e):
                    # An expired machine token: one fresh login, then retry.
                    if not relogged and self.settings.auth_method != "token":
                        relogged = True
                        self._auth.relogin()
                        continue
                    raise VaultAuthError(
                        self._auth.bad_credentials_message(self.settings.auth_method)) from None
                raise VaultPermissionDenied(self._denied_message(capability, path)) from None
            except hvac.exceptions.Unauthorized:
                raise VaultAuthError(
                    self._auth.bad_credentials_message(self.settings.auth_method)) from None
            except (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized) as e:
                if leaderless(e):
                    if election.again():
                        continue
                    raise no_leader(e, self.settings) from None
                raise VaultSealed(
                    f"{self.settings.where} is sealed or not initialized ({first_line(e)}"
                    "); unseal it (`vault operator unseal`) and run again.") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                # Sent on to a leader that is gone: VAULT_ADDR redirects to the
                # next one once elected. A write that had landed is resolved by
                # write's read-back; KV writes without check-and-set are idempotent.
                if redirected_to(e, self.settings) and election.again():
                    logger.debug("Vault's leader does not answer; retrying via %s",
                                 self.settings.addr)
                    continue
                raise transport_error(e, self.settings) from None
            except hvac.exceptions.RateLimitExceeded:
                raise VaultError(
                    f"{self.settings.where} kept answering 429 (rate limited) on {path} "
                    "after retries; lower certbot-kvault's --workers or run again later.") from None
            except hvac.exceptions.InvalidRequest as e:
                if login:
                    # Vault answers a bad role/secret id or JWT with a 400.
                    raise VaultPermissionDenied(first_line(e)) from None
                raise VaultError(f"Vault rejected the request on {path}: {first_line(e)}",
                                 said=e.errors or ()) from None
            except hvac.exceptions.InvalidPath as e:
                # A 404: below a KV mount, an absent secret (the callers' None or []);
                # anywhere, a namespace that does not exist.
                raise path_missing(e, path, self.settings) from None
            except hvac.exceptions.VaultError as e:
                if leaderless(e):
                    if election.again():
                        continue
                    raise no_leader(e, self.settings) from None
                raise VaultError(
                    f"Vault error on {path} ({type(e).__name__}): {first_line(e)}",
                    said=e.errors or ()) from None
            if isinstance(result, requests.Response) and result.status_code == 200:
                # hvac hands back the raw answer when a 200 is not JSON.
                raise self._not_an_api(NotVaultAnswer(
                    200, result.headers.get("Content-Type") or "no content type"))
            if isinstance(result, dict) and not VAULT_KEYS & result.keys():
                raise self._not_an_api(NotVaultAnswer(200, "application/json"))
            return result

    def _denied_message(self, capability: str, path: str) -> str:
        return (f"permission denied: needs {capability} on {path} ({self.settings.where}); "
                "grant it in the token's policy (see policies/ in the certbot-kvault docs).")

    def _not_an_api(self, e: NotVaultAnswer) -> VaultNotAnAPI:
        return VaultNotAnAPI(
            f"The server at {self.settings.addr} does not look like a Vault API "
            f"({e}){self._default_note()}; check VAULT_ADDR.")

    def _default_note(self) -> str:
        return (" (the default address, used because VAULT_ADDR is not set)"
                if self.settings.addr_is_default else "")


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
                if isinstance(e, VaultPathMissing) or e.vault_said("no matching mount"):
                    raise mount_missing(self.settings) from None
                raise
            data = (info or {}).get("data") or {}
            if data.get("type") not in ("kv", "generic", None):
                raise VaultUnsupported(
                    f"Mount '{mount}' is a {data.get('type')} engine, not KV; set KVAULT_MOUNT "
                    "to a KV mount.")
            version = str((data.get("options") or {}).get("version") or "1")
            self._kv_version = 2 if version == "2" else 1
        return self._kv_version

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
                return mount_missing(self.settings)
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
            v2 = self.kv_version == 2
            # A plain answer comes the direct way; anything else is asked again via hvac.
            got = self._call(lambda: self._direct.get(
                f"/v1/{mount}/{'data/' if v2 else ''}{path}", self._hvac.token),
                self.api_path(path), "read")
            if got is not None and got[0] == 404:
                return None
            if v2:
                resp = got[1] if got is not None else self._call(
                    lambda: self._hvac.secrets.kv.v2.read_secret_version(
                        path=path, mount_point=mount, raise_on_deleted_version=False),
                    self.api_path(path), "read")
                data = resp.get("data") or {}
                if data.get("data") is None:
                    return None
                return KVEntry(dict(data["data"]), int(data["metadata"]["version"]))
            resp = got[1] if got is not None else self._call(
                lambda: self._hvac.secrets.kv.v1.read_secret(path=path, mount_point=mount),
                self.api_path(path), "read")
            return KVEntry(dict(resp.get("data") or {}), None)
        except VaultError as e:
            if isinstance(e, VaultPathMissing):
                return None
            raise

    def current_version(self, path: str, live: bool = False) -> Optional[int]:
        """The latest version number of a KV v2 secret, deleted or not; None if absent
        (with ``live``, also when that version is deleted or destroyed).

        GET /v1/{mount}/metadata/{path}. (A soft-deleted secret still has one:
        check-and-set must name it.)
        """
        if self.kv_version != 2:
            return None
        mount = self.settings.mount
        try:
            resp = self._call(lambda: self._hvac.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=mount), self.api_path(path, "metadata"), "read")
        except VaultPathMissing:
            return None
        data = (resp or {}).get("data") or {}
        try:
            current = int(data.get("current_version") or 0) or None
        except (TypeError, ValueError):
            return None
        meta = (data.get("versions") or {}).get(str(current)) or {}
        if live and (meta.get("deletion_time") or meta.get("destroyed")):
            return None
        return current

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
                if cas is not None and e.vault_said("check-and-set"):
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
            if isinstance(e, VaultPathMissing):
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
        except NotVaultAnswer as e:
            raise self._not_an_api(e) from None
        except requests.exceptions.RequestException as e:
            raise transport_error(e, self.settings) from None
        except hvac.exceptions.VaultError as e:
            raise VaultError(f"{self.settings.where} answered sys/health with "
                             f"{type(e).__name__}: {first_line(e)}") from None
        if isinstance(resp, dict):
            if "initialized" not in resp:
                raise self._not_an_api(NotVaultAnswer(200, "application/json"))
            return resp
        # Another status than the ones asked for (e.g. a DR secondary's 472) still
        # carries the health document; the response hook has checked its shape.
        try:
            return dict(resp.json())
        except ValueError:
            raise self._not_an_api(NotVaultAnswer(
                resp.status_code, resp.headers.get("Content-Type") or "no content type")) \
                from None

    def close(self) -> None:
        """End the connection; a token from a machine login is revoked first.

        A token the user gave (VAULT_TOKEN, ~/.vault-token) is theirs and
        stays; ours would otherwise live on, unused, until its TTL ends.
        """
        self._auth.revoke()
        self._session.close()

