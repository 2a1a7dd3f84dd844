"""Logging in to Vault and keeping the token alive.

One :class:`Auth` per :class:`~certbot_kvault._internal.vault.VaultClient`
owns its token: the login (a given token, or an AppRole, Kubernetes or JWT
login), its renewal past two thirds of the TTL or a fresh login when it
cannot be renewed, the test of whether a 403 means the token itself is
bad, the bad-credentials messages, and revoking at exit a token that a
machine login made (a token the user gave is theirs and stays).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

import hvac
import hvac.exceptions

from certbot_kvault._internal.vault.errors import (
    PolicyDenied,
    VaultAuthError,
    VaultPermissionDenied,
)
from certbot_kvault._internal.vault.settings import VaultSettings

logger = logging.getLogger(__name__)

# VaultClient's request wrapper: (fn, path, capability, login=True) -> fn's answer.
Call = Callable[..., Any]


class Auth:
    """The token of one connection; thread-safe (the workers of a pull/push share it)."""

    def __init__(self, settings: VaultSettings, client: hvac.Client, call: Call) -> None:
        self.settings = settings
        self._hvac = client
        self._call = call
        self._lock = threading.Lock()
        self._token_expires_at: Optional[float] = None
        self._token_ttl: int = 0
        self._token_renewable = False
        self._ttl_known = False  # a given token looked itself up (its TTL is known)
        self.logged_in = False
        # True only for a token we got from a machine login: ours to revoke.
        self._own_token = False

    def login(self) -> None:
        """Log in with the configured method (no-op once logged in).

        POST /v1/auth/{mount}/login for AppRole, Kubernetes and JWT; for a
        given token, GET /v1/auth/token/lookup-self (its TTL, and whether it is valid).
        """
        with self._lock:
            if not self.logged_in:
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
                except PolicyDenied:
                    # A valid token whose policy denies lookup-self (a deny rule,
                    # or no_default_policy): usable, its TTL just unknown.
                    logger.debug("The token may not look itself up; its TTL is unknown")
                    info = {}
                data = info.get("data") or {}
                self._ttl_known = bool(data)
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
            raise VaultAuthError(self.bad_credentials_message(method, str(e))) from None
        self.logged_in = True
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

    def bad_credentials_message(self, method: str, reason: str = "") -> str:
        """One sentence; ``reason`` is Vault's own words (which never echo a credential)."""
        s = self.settings
        if method == "token":
            return self._token_message()
        what = {"approle": f"AppRole login (auth/{s.approle_mount}): check VAULT_ROLE_ID "
                           "and VAULT_SECRET_ID",
                "kubernetes": f"Kubernetes login (auth/{s.k8s_mount}, role {s.k8s_role}): "
                              "check the role's bound service accounts",
                "jwt": f"JWT login (auth/{s.jwt_mount}, role {s.jwt_role}): check the role's "
                       "bound claims and the token's audience"}[method]
        said = f" (Vault said: {reason})" if reason and reason != "permission denied" else ""
        return f"Vault at {s.addr} refused the {what}{said}."

    def _token_message(self) -> str:
        """Why Vault no longer takes the token we were given, as far as it can be told.

        Vault answers an unknown token the same whatever the reason: an expired token is
        deleted, so it is as unknown as a mistyped one. Only a token this run looked up
        before can be told apart: its TTL ran out, or it was revoked before that.
        """
        s = self.settings
        source = "VAULT_TOKEN" if s.token else "~/.vault-token"
        fix = ("run `vault login` (it writes ~/.vault-token) or set VAULT_TOKEN"
               if source != "VAULT_TOKEN" else "set VAULT_TOKEN to a valid token (or unset it "
                                               "and run `vault login`)")
        if not self.logged_in:
            return (f"Vault at {s.addr} does not know the token in {source}: it was never "
                    "issued, was revoked, or has expired (Vault keeps nothing of an expired "
                    f"token, so it cannot say which); {fix}.")
        expires = self._token_expires_at
        if expires is not None and time.monotonic() >= expires - 2:
            renewal = "it could not be renewed" if self._token_renewable else \
                "it is not renewable"
            return (f"The token in {source} expired during this run (its TTL of "
                    f"{self._token_ttl}s ran out, and {renewal}); give a token with a longer "
                    "TTL, or log in with AppRole, Kubernetes or JWT, which log in again by "
                    "themselves.")
        when = "" if expires is None else \
            f", {expires - time.monotonic():.0f}s before its TTL would have ended"
        why = "it was revoked" if self._ttl_known else \
            "it was revoked, or expired (it may not look itself up, so its TTL is unknown)"
        return (f"Vault at {s.addr} stopped taking the token in {source} during this "
                f"run{when}: {why}; {fix}.")

    def _set_token_times(self, ttl: int, renewable: bool) -> None:
        self._token_ttl = ttl
        self._token_renewable = renewable
        self._token_expires_at = time.monotonic() + ttl if ttl > 0 else None

    def maybe_renew(self) -> None:
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

    def relogin(self) -> None:
        """A fresh login, for a machine token that Vault no longer takes."""
        with self._lock:
            self._login_locked()

    def token_rejected(self, e: hvac.exceptions.Forbidden) -> bool:
        """Is this 403 about the token itself (invalid, expired, revoked, absent)?

        OpenBao and Vault answer a token they do not know with a bare
        "permission denied" (newer Vault adds "invalid token"), and a policy
        that lacks a capability with the ACL check's multi-error ("1 error
        occurred: * permission denied"), or "preflight capability check" on
        sys/internal/ui/mounts. When the answer is a bare one, lookup-self
        decides: it costs one request, where a needless fresh login would
        spend an AppRole secret id's use.
        """
        verdict = forbidden_verdict(e)
        if verdict is not None:
            return verdict
        try:
            self._hvac.auth.token.lookup_self()
            return False
        except hvac.exceptions.Forbidden as again:
            return forbidden_verdict(again) is not False
        except hvac.exceptions.Unauthorized:
            return True
        except Exception:  # noqa: BLE001 - cannot tell: keep the original 403 a denial
            return False

    def revoke(self) -> None:
        """Revoke a token from a machine login (POST /v1/auth/token/revoke-self).

        A token the user gave (VAULT_TOKEN, ~/.vault-token) is theirs and
        stays; ours would otherwise live on, unused, until its TTL ends.
        """
        if self._own_token and self.logged_in:
            try:
                self._hvac.auth.token.revoke_self()
                logger.debug("Revoked the token of this run's %s login",
                             self.settings.auth_method)
            except Exception as e:  # noqa: BLE001 - best effort; it expires anyway
                logger.debug("Could not revoke this run's token (%s)", type(e).__name__)
            self._own_token = False
            self.logged_in = False
            self._hvac.token = None


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


def forbidden_verdict(e: hvac.exceptions.Forbidden) -> Optional[bool]:
    """From Vault's answer alone: True = the token is rejected, False = a policy
    denial of a valid token, None = a bare "permission denied" (either)."""
    said = " ".join(str(x) for x in (e.errors or [])).lower()
    if "invalid token" in said:
        return True
    if "error occurred" in said or "errors occurred" in said or "preflight capability" in said:
        return False
    return None
