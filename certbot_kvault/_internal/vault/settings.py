"""How to reach and log in to Vault: the VAULT_*/KVAULT_* settings.

:class:`VaultSettings` reads the environment as the ``vault`` CLI does, and
takes the CLI's ``--vault-*`` options and the certbot plugin's ``--kvault-*``
options as overrides; both option tables live here, beside the fields they
set, so the CLI and the plugin share one list without importing each other.
:func:`as_bool` is the one reading of a yes/no string (environment
variables, renewal confs, records read back from Vault).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

from certbot import errors

DEFAULT_ADDR = "https://127.0.0.1:8200"
DEFAULT_MOUNT = "secret"
DEFAULT_PREFIX = "certbot"
DEFAULT_K8S_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105

_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def as_bool(value: Any, default: bool = False) -> bool:
    """A yes/no setting: a string is true only as one of 1/true/yes/on and false
    as one of 0/false/no/off (any case); any other string, and None, is ``default``;
    a non-string is its truth value."""
    if value is None:
        return default
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        return default
    return bool(value)


# (option, settings field, envvar, help). Tokens and secret ids are taken from
# the environment only, as the vault CLI does, so they never show in `ps`.
VAULT_OPTIONS = (
    ("--vault-addr", "addr", "VAULT_ADDR", "Vault address [VAULT_ADDR]"),
    ("--vault-namespace", "namespace", "VAULT_NAMESPACE", "Vault namespace [VAULT_NAMESPACE]"),
    ("--vault-cacert", "cacert", "VAULT_CACERT", "CA bundle for Vault's TLS [VAULT_CACERT]"),
    ("--vault-capath", "capath", "VAULT_CAPATH", "CA directory [VAULT_CAPATH]"),
    ("--vault-client-cert", "client_cert", "VAULT_CLIENT_CERT", "TLS client certificate"),
    ("--vault-client-key", "client_key", "VAULT_CLIENT_KEY", "TLS client key"),
    ("--vault-role-id", "role_id", "VAULT_ROLE_ID", "AppRole role id [VAULT_ROLE_ID]"),
    ("--vault-k8s-role", "k8s_role", "KVAULT_K8S_ROLE", "Kubernetes auth role"),
    ("--vault-jwt-role", "jwt_role", "KVAULT_JWT_ROLE", "JWT/OIDC auth role"),
    ("--vault-jwt-file", "jwt_file", "KVAULT_JWT_FILE", "File holding the JWT"),
    ("--mount", "mount", "KVAULT_MOUNT", "KV mount [KVAULT_MOUNT, default secret]"),
    ("--prefix", "prefix", "KVAULT_PREFIX", "Path prefix in the mount [KVAULT_PREFIX, "
                                            "default certbot]"),
)

# --kvault-<option> -> VaultSettings field. Tokens are never options: an
# option ends up in the renewal conf, and the renewal conf goes to Vault.
SETTING_OPTIONS = {
    "vault-addr": "addr",
    "vault-namespace": "namespace",
    "vault-cacert": "cacert",
    "mount": "mount",
    "prefix": "prefix",
}


def _seconds(var: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise errors.Error(f"{var} must be a number of seconds (0 or more), not {value!r}.")
    return seconds


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
    # How long a request keeps being retried while an HA cluster has no leader
    # that answers (a leader lost, an election), before it is an error.
    ha_deadline: float = 30.0
    # True when from_env found no address anywhere and fell back to DEFAULT_ADDR.
    addr_is_default: bool = False
    # The options that were passed (field -> flag), so messages name what was given.
    given: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False,
                                                 compare=False)

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
        "ha_deadline": "KVAULT_HA_DEADLINE",
    }, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, *,
                 flags: Optional[Mapping[str, str]] = None, **overrides: Any) -> VaultSettings:
        """Settings from the environment; non-None ``overrides`` win (CLI options).

        ``flags``: field -> the option that overrides it, for ``source`` (default: the
        CLI's ``--vault-*`` options).
        """
        env = os.environ if environ is None else environ
        settings = cls()
        for name, var in settings.ENV.items():
            value: Any = env.get(var)
            if value in (None, ""):
                continue
            if name == "skip_verify":
                value = as_bool(value)
            if name == "ha_deadline":
                value = _seconds(var, value)
            setattr(settings, name, value)
        for name, value in overrides.items():
            if value is not None and value != "":
                setattr(settings, name, value)
        settings.mount = settings.mount.strip("/")
        settings.prefix = settings.prefix.strip("/")
        settings.addr = settings.addr.rstrip("/")
        settings.addr_is_default = (env.get("VAULT_ADDR") in (None, "")
                                    and overrides.get("addr") in (None, ""))
        names = flags if flags is not None else {field: flag for flag, field, _, _ in
                                                 VAULT_OPTIONS}
        # An override equal to the variable is click reading the variable for its option.
        settings.given = {name: names.get(name, name) for name, value in overrides.items()
                          if value not in (None, "")
                          and value != env.get(settings.ENV.get(name, ""))}
        return settings

    def source(self, field: str) -> str:
        """What set ``field``, for a message: the option passed, else its variable."""
        return self.given.get(field) or self.ENV.get(field, field)

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



# Variables an app's command has no use for and must not inherit: every Vault
# setting and credential we read (VaultSettings.ENV), whatever else the vault and
# bao CLIs read (VAULT_*, BAO_*), and our own KVAULT_*.
_VAULT_ENV_PREFIXES = ("VAULT_", "BAO_", "KVAULT_")


def without_vault_env(environ: Mapping[str, str],
                      keep: Sequence[str] = ()) -> dict[str, str]:
    """``environ`` without the Vault settings and login credentials (tokens, secret
    ids, JWTs, client key paths), except the names in ``keep``."""
    ours = set(VaultSettings().ENV.values())
    return {k: v for k, v in environ.items()
            if k in keep or not (k in ours or k.upper().startswith(_VAULT_ENV_PREFIXES))}
